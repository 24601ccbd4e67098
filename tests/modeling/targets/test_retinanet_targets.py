"""RetinaNet training targets against a numpy reference of Detectron's ``roi_data/retinanet.py``
rules (written out below, one image at a time, on the full square field of anchors), on real
coco_mini ground truth."""
import math

import numpy as np
import pytest
import torch

from pydetectron.modeling.generate_anchors import retinanet_cell_anchors
from pydetectron.modeling.targets.retinanet import (
    RetinaNetTargetParams, field_size, retinanet_targets)

from _targets_coco import batch, load_roidb, pick_entries

LEVELS = (3, 4, 5, 6, 7)
RATIOS = (1.0, 2.0, 0.5)
MAX_SIZE, COARSEST = 320, 128


def _np_iou(a, b):
    """Detectron's cython bbox_overlaps (+1 widths), float32 inputs, float64 arithmetic."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return (inter / (area_a[:, None] + area_b[None, :] - inter)).astype(np.float32)


def _np_encode(ex, gt):
    ew, eh = ex[:, 2] - ex[:, 0] + 1., ex[:, 3] - ex[:, 1] + 1.
    gw, gh = gt[:, 2] - gt[:, 0] + 1., gt[:, 3] - gt[:, 1] + 1.
    return np.stack([(gt[:, 0] + .5 * gw - ex[:, 0] - .5 * ew) / ew,
                     (gt[:, 1] + .5 * gh - ex[:, 1] - .5 * eh) / eh,
                     np.log(gw / ew), np.log(gh / eh)], axis=1)


def _detectron_reference(gt_boxes, gt_classes, feature_sizes, num_classes, pos=0.5, neg=0.4):
    """One image, Detectron's way: one field of anchors per (level, octave, aspect) -- A = 1 each,
    the fields concatenated in that order -- labelled together, then split and cut to [0:h, 0:w].
    Returns per-level labels (A, H, W), per-level targets (A, 4, H, W) (zeros off foreground),
    num_fg + 1 and the bg_num term."""
    foas = []
    for lvl in LEVELS:
        stride = 2. ** lvl
        fpn_max = COARSEST * math.ceil(MAX_SIZE / COARSEST)
        F = int(math.ceil(fpn_max / stride))
        cells = retinanet_cell_anchors(lvl, 3, RATIOS, 4)
        for a in range(cells.shape[0]):
            sx, sy = np.meshgrid(np.arange(F) * stride, np.arange(F) * stride)
            shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
            foas.append((lvl, a, F, (cells[a][None] + shifts).astype(np.float32)))
    anchors = np.concatenate([f[3] for f in foas])
    labels = np.full(anchors.shape[0], -1, np.float32)
    ov = _np_iou(anchors, gt_boxes)
    argmax = ov.argmax(axis=1)
    amax = ov[np.arange(len(anchors)), argmax]
    gt_max = ov[ov.argmax(axis=0), np.arange(ov.shape[1])]
    with_max = np.where(ov == gt_max)[0]
    labels[with_max] = gt_classes[argmax[with_max]]
    above = amax >= pos
    labels[above] = gt_classes[argmax[above]]
    fg = np.where(labels >= 1)[0]
    bg = np.where(amax < neg)[0]
    labels[bg] = 0
    targets = np.zeros((len(anchors), 4), np.float32)
    targets[fg] = _np_encode(anchors[fg], gt_boxes[argmax[fg]])
    out_labels = {lvl: np.zeros((9,) + tuple(feature_sizes[i]), np.int64)
                  for i, lvl in enumerate(LEVELS)}
    out_targets = {lvl: np.zeros((9, 4) + tuple(feature_sizes[i]), np.float32)
                   for i, lvl in enumerate(LEVELS)}
    start = 0
    for lvl, a, F, f in foas:
        H, W = feature_sizes[LEVELS.index(lvl)]
        end = start + F * F
        out_labels[lvl][a] = labels[start:end].reshape(F, F)[:H, :W]
        out_targets[lvl][a] = targets[start:end].reshape(F, F, 4)[:H, :W].transpose(2, 0, 1)
        start = end
    num_fg = len(fg) + 1.
    num_bg = (len(bg) + 1.) * (num_classes - 1) + num_fg * (num_classes - 2)
    return out_labels, out_targets, num_fg, num_bg


@pytest.mark.parametrize('pos,neg', [(0.5, 0.4), (0.6, 0.3)])
def test_targets_match_detectron_rules_on_coco_mini(coco_mini, pos, neg):
    # landscape images: the blob (256 x 384) is smaller than the square field (384 x 384), so
    # the field's rows below the head's cells matter (fg count, best anchors)
    landscape = [e for e in load_roidb(coco_mini) if e['width'] > 1.4 * e['height']]
    entries = pick_entries(landscape, 3, min_gt=3)
    scales = [MAX_SIZE / max(e['height'], e['width']) for e in entries]
    roidb, im_info = batch(entries, scales)
    # the padded blob of the batch, as the loader pads (to COARSEST) -> head sizes per level
    bh = int(max(i[0] for i in im_info.tolist()))
    bw = int(max(i[1] for i in im_info.tolist()))
    bh, bw = (COARSEST * math.ceil(v / COARSEST) for v in (bh, bw))
    sizes = [(bh // 2 ** l, bw // 2 ** l) for l in LEVELS]
    cells = [torch.as_tensor(retinanet_cell_anchors(l, 3, RATIOS, 4), dtype=torch.float32)
             for l in LEVELS]
    assert bh < field_size(1., MAX_SIZE, COARSEST) == bw
    t = retinanet_targets(cells, [2. ** l for l in LEVELS], sizes, roidb, 81,
                          RetinaNetTargetParams(pos, neg, MAX_SIZE, COARSEST))
    fg_total, bg_total = 0., 0.
    for n, d in enumerate(roidb):
        keep = ~d['is_crowd'].numpy()
        ref_l, ref_t, nfg, nbg = _detectron_reference(
            d['boxes'].numpy()[keep], d['gt_classes'].numpy()[keep], sizes, 81, pos, neg)
        fg_total += nfg
        bg_total += nbg
        for i, lvl in enumerate(LEVELS):
            got_l = t['labels'][i][n].numpy()
            np.testing.assert_array_equal(got_l, ref_l[lvl], err_msg='level %d' % lvl)
            fg = np.broadcast_to((ref_l[lvl] > 0)[:, None], ref_t[lvl].shape)
            got_t = t['bbox_targets'][i][n].numpy()
            # float32 encodings (numpy and torch round differently)
            np.testing.assert_allclose(got_t[fg], ref_t[lvl][fg], rtol=1e-5, atol=1e-5)
    assert any((l > 0).any() for l in t['labels'])
    assert float(t['fg_num']) == fg_total
    assert float(t['bg_num']) == bg_total


def test_low_quality_match_below_negative_overlap_counts_as_fg_but_trains_as_bg():
    """A gt box whose best anchor has IoU < NEGATIVE_OVERLAP: Detectron labels that anchor fg,
    counts it in retnet_fg_num, then overwrites it with background."""
    cells = [torch.tensor([[0., 0., 15., 15.]])]  # one 16 x 16 anchor per cell, stride 16
    gt = [{'boxes': torch.tensor([[2., 2., 5., 5.]]), 'gt_classes': torch.tensor([2]),
           'is_crowd': torch.tensor([False])}]
    t = retinanet_targets(cells, [16.], [(2, 2)], gt, 3,
                          RetinaNetTargetParams(0.5, 0.4, MAX_SIZE, COARSEST), field_sizes=[2])
    # IoU of the 4 x 4 box with the cell-(0, 0) anchor: 16 / 256 < 0.4
    np.testing.assert_array_equal(t['labels'][0][0, 0].numpy(), [[0, 0], [0, 0]])
    assert float(t['fg_num']) == 2.0  # 1 low-quality fg + 1
    # bg_num: (4 bg + 1) * (C - 1) + fg_num * (C - 2)
    assert float(t['bg_num']) == 5 * 2 + 2 * 1


def test_crowd_and_images_without_gt():
    """Crowd boxes play no part; an image without gt is all background (fg_num counts its +1)."""
    cells = [torch.tensor([[0., 0., 15., 15.]])]
    gt = [{'boxes': torch.tensor([[0., 0., 15., 15.], [16., 0., 31., 15.]]),
           'gt_classes': torch.tensor([1, 2]), 'is_crowd': torch.tensor([False, True])},
          {'boxes': torch.zeros((0, 4)), 'gt_classes': torch.zeros(0, dtype=torch.int64),
           'is_crowd': torch.zeros(0, dtype=torch.bool)}]
    t = retinanet_targets(cells, [16.], [(1, 2)], gt, 3,
                          RetinaNetTargetParams(0.5, 0.4, MAX_SIZE, COARSEST), field_sizes=[2])
    np.testing.assert_array_equal(t['labels'][0][:, 0].numpy(), [[[1, 0]], [[0, 0]]])
    assert float(t['fg_num']) == (1 + 1) + (0 + 1)


@pytest.mark.cuda
def test_cuda_equals_cpu_without_host_sync(coco_mini):
    params = RetinaNetTargetParams(0.5, 0.4, MAX_SIZE, COARSEST)
    entries = pick_entries(load_roidb(coco_mini), 2, min_gt=3)
    roidb, _ = batch(entries, [MAX_SIZE / max(e['height'], e['width']) for e in entries])
    sizes = [(384 // 2 ** l, 384 // 2 ** l) for l in LEVELS]
    cells = [torch.as_tensor(retinanet_cell_anchors(l, 3, RATIOS, 4), dtype=torch.float32)
             for l in LEVELS]
    strides = [2. ** l for l in LEVELS]
    cpu = retinanet_targets(cells, strides, sizes, roidb, 81, params)
    from pydetectron.modeling.targets.gt import pack_gt
    gt = pack_gt(roidb, 'cuda')
    cells_cuda = [c.cuda() for c in cells]   # the copies sync; they are not what is under test
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        gpu = retinanet_targets(cells_cuda, strides, sizes, gt, 81, params)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    for a, b, la in zip(cpu['bbox_targets'], gpu['bbox_targets'], cpu['labels']):
        fg = (la > 0).unsqueeze(2).expand_as(a)
        torch.testing.assert_close(b.cpu()[fg], a[fg], rtol=1e-5, atol=1e-5)
    for a, b in zip(cpu['labels'], gpu['labels']):
        assert torch.equal(a, b.cpu())
    assert float(cpu['fg_num']) == float(gpu['fg_num'])
