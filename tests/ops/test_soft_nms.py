"""Soft-NMS against a float32 numpy transliteration of Detectron's algorithm written here."""
import math

import numpy as np
import pytest
import torch

from pydetectron.ops import nms, soft_nms
from ops_test_utils import cuda_kernels_available, needs_ext, random_boxes

pytestmark = needs_ext


def soft_nms_reference(boxes, scores, sigma, nt, thresh, method):
    """The Cython loop, step for step, in numpy float32 scalars."""
    f = np.float32
    dets = np.concatenate([boxes.numpy(), scores.numpy()[:, None]], 1).astype(np.float32)
    inds = list(range(len(dets)))
    n = len(dets)
    i = 0
    while i < n:
        maxpos = i
        for pos in range(i + 1, n):
            if dets[maxpos, 4] < dets[pos, 4]:
                maxpos = pos
        dets[[i, maxpos]] = dets[[maxpos, i]]
        inds[i], inds[maxpos] = inds[maxpos], inds[i]
        tx1, ty1, tx2, ty2 = dets[i, :4]
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2 = dets[pos, :4]
            area = f((x2 - x1 + f(1)) * (y2 - y1 + f(1)))
            iw = f(min(tx2, x2) - max(tx1, x1) + f(1))
            if iw > 0:
                ih = f(min(ty2, y2) - max(ty1, y1) + f(1))
                if ih > 0:
                    ua = f(f(f((tx2 - tx1 + f(1)) * (ty2 - ty1 + f(1))) + area) - f(iw * ih))
                    ov = f(f(iw * ih) / ua)
                    if method == "linear":
                        weight = f(1) - ov if ov > f(nt) else f(1)
                    elif method == "gaussian":
                        weight = f(math.exp(float(f(-f(ov * ov) / f(sigma)))))
                    else:
                        weight = f(0) if ov > f(nt) else f(1)
                    dets[pos, 4] = f(weight * dets[pos, 4])
                    if dets[pos, 4] < f(thresh):
                        dets[pos] = dets[n - 1]
                        inds[pos] = inds[n - 1]
                        n -= 1
                        pos -= 1
            pos += 1
        i += 1
    return torch.from_numpy(dets[:n, :4]), torch.from_numpy(dets[:n, 4]), torch.tensor(inds[:n])


def _case(seed, num=150):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(num, g, image=300.0, max_size=120.0)
    scores = torch.rand(num, generator=g)
    scores[::9] = scores[0]  # exact ties
    return boxes, scores


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
@pytest.mark.parametrize("score_thresh", [0.001, 0.3])
def test_matches_detectron_bit_for_bit(method, score_thresh):
    boxes, scores = _case(seed=len(method) + int(score_thresh * 10))
    out_boxes, out_scores, keep = soft_nms(boxes, scores, 0.5, 0.3, score_thresh, method)
    ref_boxes, ref_scores, ref_keep = soft_nms_reference(boxes, scores, 0.5, 0.3, score_thresh,
                                                         method)
    assert torch.equal(keep, ref_keep)
    assert torch.equal(out_scores, ref_scores)
    assert torch.equal(out_boxes, ref_boxes)
    assert torch.equal(out_boxes, boxes[keep])


def test_hand_computed_linear_and_gaussian():
    # B overlaps A with IoU exactly 0.5 (+1 widths); C is far away.
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 19], [100, 100, 110, 110.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    b, s, k = soft_nms(boxes, scores, 0.5, 0.3, 0.001, "linear")
    assert k.tolist() == [0, 2, 1]  # B decays to 0.8 * (1 - 0.5) = 0.4 < C's 0.7
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.4])
    b, s, k = soft_nms(boxes, scores, 0.5, 0.3, 0.001, "gaussian")
    assert s[2].item() == pytest.approx(0.8 * math.exp(-0.25 / 0.5), rel=1e-6)
    b, s, k = soft_nms(boxes, scores, 0.5, 0.3, 0.001, "hard")  # score 0 < thresh: dropped
    assert k.tolist() == [0, 2]


def test_empty_float64_and_errors():
    b, s, k = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert b.shape == (0, 4) and s.shape == (0,) and k.shape == (0,)
    boxes, scores = _case(seed=3, num=60)
    b64, s64, k64 = soft_nms(boxes.double(), scores.double(), method="gaussian")
    assert b64.dtype == torch.float64 and len(k64) > 0
    torch.testing.assert_close(s64.float(), soft_nms(boxes, scores, method="gaussian")[1])
    with pytest.raises(ValueError, match="unknown `method`"):
        soft_nms(boxes, scores, method="quadratic")
    # 'hard' with a positive threshold keeps what nms keeps (> vs >= aside, for random boxes).
    _, _, k_hard = soft_nms(boxes, scores, 0.5, 0.4, 1e-9, "hard")
    assert sorted(k_hard.tolist()) == sorted(nms(boxes, scores, 0.4).tolist())


cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
@pytest.mark.parametrize("num", [1, 150, 3000])
def test_cuda_matches_cpu_bit_for_bit(method, num):
    boxes, scores = _case(seed=num, num=num)
    cpu = soft_nms(boxes, scores, 0.5, 0.3, 0.01, method)
    gpu = soft_nms(boxes.cuda(), scores.cuda(), 0.5, 0.3, 0.01, method)
    for a, b in zip(gpu, cpu):
        assert torch.equal(a.cpu(), b)
