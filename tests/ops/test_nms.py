"""NMS, batched NMS and box IoU against greedy float32 references written here."""
import numpy as np
import pytest
import torch

from pydetectron.ops import batched_nms, batched_nms_mask, box_iou, nms
from ops_test_utils import cuda_kernels_available, needs_ext, random_boxes

pytestmark = needs_ext


def greedy_nms_reference(boxes, scores, thresh):
    """Detectron's greedy loop in numpy float32 (IoU >= thresh suppresses); stable score order."""
    b = boxes.numpy().astype(np.float32)
    s = scores.numpy().astype(np.float32)
    t = np.float32(thresh)
    one = np.float32(1)
    areas = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    suppressed = np.zeros(len(s), dtype=bool)
    keep = []
    for oi, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[oi + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + one)
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + one)
            inter = np.float32(w * h)
            if np.float32(inter / np.float32(areas[i] + areas[j] - inter)) >= t:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_matches_greedy_reference(thresh):
    g = torch.Generator().manual_seed(int(thresh * 10))
    boxes = random_boxes(300, g)
    scores = torch.rand(300, generator=g)
    assert torch.equal(nms(boxes, scores, thresh), greedy_nms_reference(boxes, scores, thresh))


def test_boxes_exactly_at_the_threshold_are_suppressed():
    # With +1 widths: A = [0, 9]^2 (area 100); B = [0, 9] x [0, 19] (area 200) overlaps A by 100,
    # IoU exactly 100 / 200 = 0.5; C = [0, 9] x [0, 39] has IoU 100 / 400 = 0.25 with A.
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 19], [0, 0, 9, 39.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]        # IoU == threshold: suppressed
    assert nms(boxes, scores, 0.5000001).tolist() == [0, 1, 2]  # just above: kept
    assert nms(boxes, scores, 0.25).tolist() == [0]           # B-C IoU is 0.5 too
    assert nms(boxes, scores, 0.2500001).tolist() == [0, 2]  # C at 0.25 from A, B removed


def test_plus_one_convention():
    # Without +1, [0, 10] and [10, 20] touch (IoU 0); with +1 they share a column: 11 / 231.
    boxes = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(11 / (121 + 121 - 11))
    assert nms(boxes, torch.tensor([1.0, 0.5]), 0.05).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([1.0, 0.5]), 0.047).tolist() == [0]


def test_ties_in_score_keep_the_lower_index_first():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes[:3], scores[:3], 0.5).tolist() == [0, 2]
    g = torch.Generator().manual_seed(4)
    boxes = random_boxes(200, g)
    scores = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    assert torch.equal(nms(boxes, scores, 0.5), greedy_nms_reference(boxes, scores, 0.5))


def test_empty_and_dtypes():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.long
    g = torch.Generator().manual_seed(5)
    boxes, scores = random_boxes(100, g), torch.rand(100, generator=g)
    keep = nms(boxes, scores, 0.6)
    assert torch.equal(nms(boxes.double(), scores.double(), 0.6), keep)
    half = nms(boxes.half(), scores.half(), 0.6)
    assert half.dtype == torch.long and len(half) > 0
    # Non-contiguous input.
    wide = torch.cat([boxes, scores[:, None]], 1)
    assert torch.equal(nms(wide[:, :4], wide[:, 4], 0.6), keep)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`boxes` must have shape"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="`scores` must have shape"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="`scores` .* must have the dtype of `boxes`"):
        nms(torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64), 0.5)
    with pytest.raises(TypeError, match="`idxs` must be an integer tensor"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    # The kernels check too (for callers of torch.ops.pydetectron.nms directly).
    with pytest.raises(RuntimeError, match="`boxes` must have shape"):
        torch.ops.pydetectron.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


def test_batched_nms_equals_per_class_nms():
    g = torch.Generator().manual_seed(6)
    boxes = random_boxes(400, g)
    scores = torch.rand(400, generator=g)
    idxs = torch.randint(0, 7, (400,), generator=g)
    expected = torch.cat([torch.nonzero(idxs == c).squeeze(1)[
        nms(boxes[idxs == c], scores[idxs == c], 0.5)] for c in range(7)])
    expected = expected[torch.argsort(-scores[expected], stable=True)]
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                       0.5).shape == (0,)


def test_box_iou_matches_pairwise():
    g = torch.Generator().manual_seed(7)
    a, b = random_boxes(20, g, torch.float64), random_boxes(30, g, torch.float64)
    iou = box_iou(a, b)
    for i in range(0, 20, 3):
        for j in range(0, 30, 4):
            w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]) + 1)
            h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]) + 1)
            area_a = (a[i, 2] - a[i, 0] + 1) * (a[i, 3] - a[i, 1] + 1)
            area_b = (b[j, 2] - b[j, 0] + 1) * (b[j, 3] - b[j, 1] + 1)
            assert iou[i, j].item() == pytest.approx((w * h / (area_a + area_b - w * h)).item())
    with pytest.raises(ValueError, match="`boxes_b` must have shape"):
        box_iou(a, b[:, :3])


def test_torch_compile_traces_nms():
    g = torch.Generator().manual_seed(8)
    boxes, scores = random_boxes(50, g), torch.rand(50, generator=g)
    f = torch.compile(lambda b, s: nms(b, s, 0.5), backend="aot_eager")
    assert torch.equal(f(boxes, scores), nms(boxes, scores, 0.5))


# ------------------------------------------------------------------------------------ CUDA
def test_batched_nms_mask_flags_the_kept_boxes_in_input_order():
    g = torch.Generator().manual_seed(16)
    boxes = random_boxes(300, g)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 5, (300,), generator=g)
    mask = batched_nms_mask(boxes, scores, idxs, 0.6)
    assert mask.dtype == torch.bool and mask.shape == (300,)
    expected = torch.zeros(300, dtype=torch.bool)
    for c in range(5):
        members = torch.nonzero(idxs == c).squeeze(1)
        expected[members[greedy_nms_reference(boxes[members], scores[members], 0.6)]] = True
    assert torch.equal(mask, expected)
    assert batched_nms_mask(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                            0.5).shape == (0,)
    with pytest.raises(ValueError, match="batched_nms_mask: `idxs` must have shape"):
        batched_nms_mask(boxes, scores, idxs[:5], 0.5)


cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("groups", [1, 3, 40, 2000])
def test_cuda_batched_nms_mask_matches_cpu_without_host_sync(groups):
    # Groups sorted into runs let the mask kernel skip tiles; ties and many groups (some of one
    # box) check that skipping never changes a result.
    g = torch.Generator().manual_seed(groups)
    n = 5000
    boxes = random_boxes(n, g, image=600.0, max_size=200.0)
    scores = torch.randint(0, 300, (n,), generator=g).float() / 300
    idxs = torch.randint(0, groups, (n,), generator=g)
    expected = batched_nms_mask(boxes, scores, idxs, 0.5)
    b, s, i = boxes.cuda(), scores.cuda(), idxs.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask = batched_nms_mask(b, s, i, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(mask.cpu(), expected)
    assert torch.equal(batched_nms(b, s, i, 0.5).cpu(), batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("per_class,classes", [(1000, 80), (200, 7), (65, 3)])
def test_cuda_class_wise_nms_of_detectron_s_test_path_matches_cpu(per_class, classes):
    # Detectron's test path with TEST.SCORE_THRESH 0: every class holds every RoI (80 x 1000
    # boxes in one call); class runs of 1000 span many 64-box blocks and start mid-block. Boxes
    # cluster round a few centres so that suppression chains cross blocks; class ids are
    # neither contiguous nor positive; scores tie.
    g = torch.Generator().manual_seed(per_class + classes)
    n = per_class * classes
    k = max(2, n // 4000)
    centres = torch.rand(k, 2, generator=g) * 700
    xy = centres[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 15
    wh = torch.rand(n, 2, generator=g) * 60 + 40
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randint(0, 500, (n,), generator=g).float() / 500
    ids = torch.tensor([-3, 0, 7] + list(range(10, 10 + 3 * (classes - 3), 3)))[:classes]
    idxs = ids[torch.randperm(n, generator=g) % classes]
    expected = batched_nms_mask(boxes, scores, idxs, 0.5)
    assert 0 < int(expected.sum()) < n // 2     # real suppression
    mask = batched_nms_mask(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(mask.cpu(), expected)
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(),
                       batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("num", [1, 63, 64, 65, 1000, 12000])
@pytest.mark.parametrize("thresh", [0.5, 0.7])
def test_cuda_matches_cpu(num, thresh):
    g = torch.Generator().manual_seed(num)
    boxes = random_boxes(num, g, image=1000.0, max_size=300.0)
    scores = torch.rand(num, generator=g)
    scores[1::2] = scores[0::2][: len(scores[1::2])]  # every score appears twice: ties
    keep_cpu = nms(boxes, scores, thresh)
    keep_gpu = nms(boxes.cuda(), scores.cuda(), thresh)
    assert keep_gpu.device.type == "cuda"
    assert torch.equal(keep_gpu.cpu(), keep_cpu)


@pytest.mark.cuda
@cuda
def test_cuda_threshold_ties_dtypes_and_batched():
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 19], [0, 0, 9, 39.0]], device="cuda")
    scores = torch.tensor([0.9, 0.8, 0.7], device="cuda")
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5000001).tolist() == [0, 1, 2]
    assert nms(boxes[:0], scores[:0], 0.5).shape == (0,)
    g = torch.Generator().manual_seed(9)
    b = random_boxes(3000, g, image=800.0)
    s = torch.randint(0, 50, (3000,), generator=g).float()
    idxs = torch.randint(0, 20, (3000,), generator=g)
    assert torch.equal(nms(b.cuda(), s.cuda(), 0.6).cpu(), nms(b, s, 0.6))
    assert torch.equal(nms(b.double().cuda(), s.double().cuda(), 0.6).cpu(),
                       nms(b.double(), s.double(), 0.6))
    assert torch.equal(batched_nms(b.cuda(), s.cuda(), idxs.cuda(), 0.5).cpu(),
                       batched_nms(b, s, idxs, 0.5))
