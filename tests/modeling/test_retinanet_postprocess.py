"""RetinaNet's device post-processing against a numpy transcription of Detectron's
``core/test_retinanet.py: im_detect_bbox`` (thresholds, per-level top-k, decode, scale, clip,
class-wise NMS, the per-image limit) on random head outputs."""
import numpy as np
import pytest
import torch

from pydetectron.modeling.retinanet_heads import RetinaNetHead
from pydetectron.modeling.retinanet_postprocess import (
    batched_nms_and_limit, candidate_detections, level_candidates, nms_and_limit)

CLIP = np.log(1000. / 16.)


def _np_decode(boxes, deltas):
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    dw, dh = np.minimum(deltas[:, 2], CLIP), np.minimum(deltas[:, 3], CLIP)
    pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
    pw, ph = np.exp(dw) * w, np.exp(dh) * h
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1], 1)


def _np_nms(dets, thresh):
    x1, y1, x2, y2, s = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = s.argsort()[::-1], []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0., xx2 - xx1 + 1) * np.maximum(0., yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][ovr <= thresh]
    return keep


def _detectron_im_detect_bbox(head, cls_probs, box_preds, scale, im_shape, num_classes, th,
                              top_n, nms, per_im):
    """Detectron's loop for image 0 (class-agnostic regression), in numpy."""
    A = head.num_anchors
    boxes_all = {}
    for (cell, stride), lvl, cp, bp in zip(head.cell_anchors(),
                                           range(head.k_min, head.k_max + 1), cls_probs,
                                           box_preds):
        cell = cell.numpy().astype(np.float64)
        cp = cp.reshape(cp.shape[0], A, cp.shape[1] // A, cp.shape[2], cp.shape[3])
        bp = bp.reshape(bp.shape[0], A, 4, bp.shape[2], bp.shape[3])
        if head.softmax:
            cp = cp[:, :, 1:]
        flat = cp.ravel()
        t = th if lvl < head.k_max else 0.0
        cand = np.where(flat > t)[0]
        if len(cand) == 0:
            continue
        k = min(top_n, len(cand))
        inds = cand[np.argpartition(flat[cand], -k)[-k:]]
        i5 = np.array(np.unravel_index(inds, cp.shape)).T
        classes, a, y, x = i5[:, 2], i5[:, 1], i5[:, 3], i5[:, 4]
        scores = cp[:, a, classes, y, x].ravel()
        boxes = np.column_stack((x, y, x, y)).astype(np.float32)
        boxes *= stride
        boxes += cell[a]
        pred = _np_decode(boxes, bp[0, a, :, y, x]) / scale
        pred[:, 0::2] = np.clip(pred[:, 0::2], 0, im_shape[1] - 1)
        pred[:, 1::2] = np.clip(pred[:, 1::2], 0, im_shape[0] - 1)
        for c in range(1, num_classes):
            sel = classes == c - 1
            if sel.any():
                boxes_all.setdefault(c, []).extend(np.hstack([pred[sel], scores[sel, None]]))
    dets = []
    for c, b in boxes_all.items():
        b = np.vstack(b).astype(np.float32)
        b = b[_np_nms(b, nms)]
        dets.append(np.hstack([b, np.full((len(b), 1), c)]))
    dets = np.vstack(dets)
    return dets[np.argsort(-dets[:, 4])[:per_im]]


@pytest.mark.parametrize('softmax', [False, True])
def test_matches_detectron_im_detect_bbox(softmax):
    C, N = 5, 2
    head = RetinaNetHead(8, C, 3, 5, scales_per_octave=2, aspect_ratios=(1.0, 0.5),
                         anchor_scale=4, num_convs=1, softmax=softmax)
    A, K = head.num_anchors, C if softmax else C - 1
    g = torch.Generator().manual_seed(0)
    sizes = [(16, 20), (8, 10), (4, 5)]
    probs = [torch.rand(N, A * K, h, w, generator=g) ** 3 for h, w in sizes]
    deltas = [torch.randn(N, A * 4, h, w, generator=g) * 0.3 for h, w in sizes]
    scale = 0.8
    im_info = torch.tensor([[128., 160., scale]] * N)
    im_sizes = torch.tensor([[150., 190.], [100., 120.]])
    cands = candidate_detections(head, probs, deltas, im_info, im_sizes, inference_th=0.3,
                                 pre_nms_top_n=50)
    batched = batched_nms_and_limit(
        level_candidates(head, probs, deltas, im_info, im_sizes, inference_th=0.3,
                         pre_nms_top_n=50), C, 0.5, 40)
    for n in range(N):
        got = nms_and_limit(cands[n], 0.5, 40)
        for key in ('boxes', 'scores', 'classes'):  # the batched path gives the same
            torch.testing.assert_close(batched[n][key], got[key], rtol=0, atol=0)
        ref = _detectron_im_detect_bbox(
            head, [p[n:n + 1].numpy() for p in probs], [d[n:n + 1].numpy() for d in deltas],
            scale, im_sizes[n].tolist(), C, 0.3, 50, 0.5, 40)
        assert got['boxes'].shape[0] == ref.shape[0] == 40
        np.testing.assert_array_equal(got['classes'].numpy(), ref[:, 5])
        np.testing.assert_allclose(got['scores'].numpy(), ref[:, 4], rtol=0, atol=0)
        np.testing.assert_allclose(got['boxes'].numpy(), ref[:, :4], rtol=1e-5, atol=1e-3)


def test_coarsest_level_threshold_is_zero():
    """No score above INFERENCE_TH anywhere: the coarsest level still gives candidates."""
    head = RetinaNetHead(8, 3, 3, 4, scales_per_octave=1, aspect_ratios=(1.0,), num_convs=0)
    probs = [torch.full((1, 2, 4, 4), 0.01), torch.full((1, 2, 2, 2), 0.01)]
    deltas = [torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 2)]
    c = candidate_detections(head, probs, deltas, torch.tensor([[32., 32., 1.]]),
                             torch.tensor([[32., 32.]]), inference_th=0.05, pre_nms_top_n=3)[0]
    assert c['boxes'].shape[0] == 3  # level 4 only, its top 3 of 2 x 2 x 2
    assert set(c['classes'].tolist()) <= {1, 2}
    assert (c['scores'] == 0.01).all()


def test_class_specific_deltas_are_the_candidates_class():
    """CLASS_SPECIFIC_BBOX: candidate (a, class c, y, x) is decoded by channels
    a * 4 (C - 1) + 4 (c - 1) + j (the training layout; Detectron's own test path cannot run it)."""
    C = 4
    head = RetinaNetHead(8, C, 3, 3, scales_per_octave=1, aspect_ratios=(1.0, 2.0),
                         num_convs=0, class_specific_bbox=True)
    g = torch.Generator().manual_seed(1)
    probs = [torch.rand(1, 2 * 3, 4, 5, generator=g)]
    deltas = [torch.randn(1, 2 * 3 * 4, 4, 5, generator=g) * 0.3]
    c = level_candidates(head, probs, deltas, torch.tensor([[32., 40., 1.]]),
                         torch.tensor([[32., 40.]]), inference_th=0.0, pre_nms_top_n=1000)
    p = probs[0][0].view(2, 3, 4, 5).numpy()
    d = deltas[0][0].numpy()
    cell = head.cell_anchors()[0][0].numpy()
    assert c['boxes'].shape[1] == 2 * 3 * 20
    for box, score, cls in zip(c['boxes'][0].numpy(), c['scores'][0].numpy(),
                               c['classes'][0].numpy()):
        a, y, x = [int(v[0]) for v in np.where(p[:, cls - 1] == score)]
        anchor = (cell[a] + np.array([x, y, x, y]) * 8.).astype(np.float32)[None]
        ch = a * 4 * (C - 1) + 4 * (cls - 1)
        ref = _np_decode(anchor, d[ch:ch + 4, y, x][None])[0]
        ref = np.clip(ref, 0, [39, 31, 39, 31])
        np.testing.assert_allclose(box, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.cuda
def test_cuda_equals_cpu():
    C, N = 5, 2
    head = RetinaNetHead(8, C, 3, 5, scales_per_octave=2, aspect_ratios=(1.0, 0.5), num_convs=1)
    g = torch.Generator().manual_seed(0)
    sizes = [(16, 20), (8, 10), (4, 5)]
    probs = [torch.rand(N, 2 * 2 * 4, h, w, generator=g) ** 3 for h, w in sizes]
    deltas = [torch.randn(N, 2 * 2 * 4, h, w, generator=g) * 0.3 for h, w in sizes]
    im_info = torch.tensor([[128., 160., 0.8]] * N)
    im_sizes = torch.tensor([[150., 190.], [100., 120.]])
    cpu = batched_nms_and_limit(level_candidates(head, probs, deltas, im_info, im_sizes, 0.3, 50),
                                C, 0.5, 40)
    head = head.cuda()
    # the host-to-device copies sync; they are not what is under test
    probs_c, deltas_c = [p.cuda() for p in probs], [d.cuda() for d in deltas]
    im_info_c, im_sizes_c = im_info.cuda(), im_sizes.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        cands = level_candidates(head, probs_c, deltas_c, im_info_c, im_sizes_c, 0.3, 50)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    gpu = batched_nms_and_limit(cands, C, 0.5, 40)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a['classes'], b['classes'].cpu())
        torch.testing.assert_close(b['scores'].cpu(), a['scores'], rtol=0, atol=0)
        torch.testing.assert_close(b['boxes'].cpu(), a['boxes'], rtol=1e-5, atol=1e-3)
