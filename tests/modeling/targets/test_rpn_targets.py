"""RPN anchor targets against a numpy reference that follows Detectron's ``_get_rpn_blobs``, on
real coco_mini ground truth (single-scale C4 anchors and FPN levels 2..6)."""
import math

import numpy as np
import pytest
import torch

from _targets_coco import batch, load_roidb, pick_entries
from _params import rpn_params
from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import shifted_anchors
from pydetectron.modeling.targets import pack_gt, rpn_anchor_targets
from pydetectron.utils.boxes import bbox_overlaps, bbox_transform_inv


def _fpn_anchors(im_info, k_min=2, k_max=6, coarsest=32):
    H_blob = int(math.ceil(im_info[:, 0].max().item() / coarsest) * coarsest)
    W_blob = int(math.ceil(im_info[:, 1].max().item() / coarsest) * coarsest)
    anchors, sizes = [], []
    for lvl in range(k_min, k_max + 1):
        stride = 2 ** lvl
        cell = torch.as_tensor(generate_anchors(stride, (32 * 2 ** (lvl - k_min),), (0.5, 1, 2)),
                               dtype=torch.float32)
        H, W = int(math.ceil(H_blob / stride)), int(math.ceil(W_blob / stride))
        anchors.append(shifted_anchors(cell, H, W, stride))
        sizes.append((H, W))
    return anchors, sizes


def _c4_anchors(im_info, stride=16):
    cell = torch.as_tensor(generate_anchors(stride, (32, 64, 128, 256, 512), (0.5, 1, 2)),
                           dtype=torch.float32)
    H = int(math.ceil(im_info[:, 0].max().item() / stride))
    W = int(math.ceil(im_info[:, 1].max().item() / stride))
    return [shifted_anchors(cell, H, W, stride)], [(H, W)]


def _reference(all_anchors, gt_boxes, im_h, im_w, straddle=0, pos=0.7, neg=0.3):
    """Detectron's labelling before subsampling: (fg candidates, bg candidates, argmax gt),
    over all anchors (outside anchors are neither)."""
    T = all_anchors.shape[0]
    inside = np.where((all_anchors[:, 0] >= -straddle) & (all_anchors[:, 1] >= -straddle)
                      & (all_anchors[:, 2] < im_w + straddle)
                      & (all_anchors[:, 3] < im_h + straddle))[0]
    anchors = all_anchors[inside]
    labels = -np.ones(len(inside), dtype=np.int32)
    ov = bbox_overlaps(anchors, gt_boxes)
    argmax = ov.argmax(axis=1)
    amax = ov[np.arange(len(inside)), argmax]
    gt_max = ov[ov.argmax(axis=0), np.arange(ov.shape[1])]
    labels[np.where(ov == gt_max)[0]] = 1
    labels[amax >= pos] = 1
    fg = np.zeros(T, bool)
    bg = np.zeros(T, bool)
    full_argmax = np.zeros(T, np.int64)
    fg[inside[labels == 1]] = True
    bg[inside[amax < neg]] = True
    full_argmax[inside] = argmax
    return fg, bg, full_argmax


def _flat(blobs, key, N):
    """Per-level head-layout blobs -> (N, T) labels or (N, T, 4) in anchor order."""
    parts = []
    for b in blobs:
        x = b[key]
        if key == 'rpn_labels_int32':
            parts.append(x.permute(0, 2, 3, 1).reshape(N, -1))
        else:
            n, c, h, w = x.shape
            parts.append(x.permute(0, 2, 3, 1).reshape(N, h * w * (c // 4), 4))
    return torch.cat(parts, dim=1).numpy()


def _nonsubsampled_check(anchors, sizes, roidb, im_info):
    """With subsampling disabled every candidate is labelled: compare the labels exactly, and the
    targets / weights of the positives."""
    N = len(roidb)
    blobs = rpn_anchor_targets(anchors, sizes, roidb, im_info,
                               rpn_params(batch_size_per_im=10 ** 7, fg_fraction=1.0))
    labels = _flat(blobs, 'rpn_labels_int32', N)
    targets = _flat(blobs, 'rpn_bbox_targets', N)
    inside_w = _flat(blobs, 'rpn_bbox_inside_weights', N)
    outside_w = _flat(blobs, 'rpn_bbox_outside_weights', N)
    all_anchors = torch.cat(anchors).numpy()
    for i, d in enumerate(roidb):
        keep = ~d['is_crowd'].numpy()
        gt = d['boxes'].numpy()[keep]
        fg, bg, argmax = _reference(all_anchors, gt, im_info[i, 0].item(), im_info[i, 1].item())
        ref = -np.ones(len(all_anchors), np.int32)
        ref[fg] = 1
        ref[bg] = 0          # Detectron's negatives override positives
        np.testing.assert_array_equal(labels[i], ref)
        pos = ref == 1
        assert pos.sum() > 0 and (ref == 0).sum() > 0
        exp = bbox_transform_inv(all_anchors[pos].astype(np.float64),
                                 gt[argmax[pos]].astype(np.float64))
        np.testing.assert_allclose(targets[i][pos], exp, rtol=1e-5, atol=1e-5)
        assert not targets[i][~pos].any()
        np.testing.assert_array_equal(inside_w[i], np.repeat(pos[:, None], 4, 1).astype(np.float32))
        n_ex = (ref >= 0).sum()
        np.testing.assert_allclose(outside_w[i][ref >= 0], 1.0 / n_ex, rtol=1e-6)
        assert not outside_w[i][ref < 0].any()


def _subsampled_check(anchors, sizes, roidb, im_info, batch_size=256, fg_fraction=0.5):
    N = len(roidb)
    g = torch.Generator().manual_seed(3)
    blobs = rpn_anchor_targets(anchors, sizes, roidb, im_info,
                               rpn_params(batch_size_per_im=batch_size, fg_fraction=fg_fraction),
                               generator=g)
    labels = _flat(blobs, 'rpn_labels_int32', N)
    outside_w = _flat(blobs, 'rpn_bbox_outside_weights', N)
    all_anchors = torch.cat(anchors).numpy()
    num_fg = int(fg_fraction * batch_size)
    for i, d in enumerate(roidb):
        gt = d['boxes'].numpy()[~d['is_crowd'].numpy()]
        fg_c, bg_c, _ = _reference(all_anchors, gt, im_info[i, 0].item(), im_info[i, 1].item())
        fg, bg = labels[i] == 1, labels[i] == 0
        assert not (fg & ~fg_c).any() and not (bg & ~bg_c).any()
        fg_before = min(num_fg, fg_c.sum())
        # a positive may be redrawn as a negative only if its IoU is below the negative threshold
        assert fg_before - (fg_c & bg_c).sum() <= fg.sum() <= fg_before
        # negatives are draws with replacement: a few repeats at most
        draws = batch_size - fg_before
        n = bg_c.sum()
        expected_repeats = draws - n * (1 - (1 - 1. / n) ** draws)
        assert draws - 4 * expected_repeats - 4 <= bg.sum() <= draws
        np.testing.assert_allclose(outside_w[i][labels[i] >= 0], 1. / (fg.sum() + bg.sum()),
                                   rtol=1e-6)


@pytest.fixture(scope='module')
def coco_batch(coco_mini):
    roidb = load_roidb(coco_mini)
    entries = pick_entries(roidb, 2, min_gt=3, need_crowd=True) \
        + pick_entries(roidb[40:], 1, min_gt=6)
    # three images at different blob sizes in one batch (the blob is padded to the largest)
    return batch(entries, [0.5, 0.45, 0.55])


def test_fpn_labels_match_detectron_joint_over_levels(coco_batch):
    roidb, im_info = coco_batch
    anchors, sizes = _fpn_anchors(im_info)
    _nonsubsampled_check(anchors, sizes, roidb, im_info)


def test_c4_labels_match_detectron(coco_batch):
    roidb, im_info = coco_batch
    anchors, sizes = _c4_anchors(im_info)
    _nonsubsampled_check(anchors, sizes, roidb, im_info)


def test_subsampling_counts_and_membership(coco_batch):
    roidb, im_info = coco_batch
    anchors, sizes = _fpn_anchors(im_info)
    _subsampled_check(anchors, sizes, roidb, im_info)
    anchors, sizes = _c4_anchors(im_info)
    _subsampled_check(anchors, sizes, roidb, im_info, batch_size=64, fg_fraction=0.25)


def test_layout_shapes_and_reproducibility(coco_batch):
    roidb, im_info = coco_batch
    anchors, sizes = _fpn_anchors(im_info)
    gt = pack_gt(roidb, 'cpu')
    a = rpn_anchor_targets(anchors, sizes, gt, im_info, rpn_params(),
                           generator=torch.Generator().manual_seed(7))
    b = rpn_anchor_targets(anchors, sizes, gt, im_info, rpn_params(),
                           generator=torch.Generator().manual_seed(7))
    c = rpn_anchor_targets(anchors, sizes, gt, im_info, rpn_params(),
                           generator=torch.Generator().manual_seed(8))
    assert len(a) == 5
    for lvl, (H, W) in enumerate(sizes):
        assert a[lvl]['rpn_labels_int32'].shape == (3, 3, H, W)
        assert a[lvl]['rpn_labels_int32'].dtype == torch.int32
        for k in ('rpn_bbox_targets', 'rpn_bbox_inside_weights', 'rpn_bbox_outside_weights'):
            assert a[lvl][k].shape == (3, 12, H, W) and a[lvl][k].dtype == torch.float32
        for k in a[lvl]:
            assert torch.equal(a[lvl][k], b[lvl][k])
    assert any(not torch.equal(a[l]['rpn_labels_int32'], c[l]['rpn_labels_int32'])
               for l in range(5))


def test_anchor_channel_layout_and_straddle():
    # One 2 x 3 map (stride 16, a 32 x 48 image), A = 2 anchors per cell: a=0 is 16 x 16, a=1 is
    # 32 x 8. The only gt box coincides with anchor (h=1, w=1, a=1).
    cell = torch.tensor([[0., 0., 15., 15.], [0., 0., 31., 7.]])
    anchors = shifted_anchors(cell, 2, 3, 16)
    gt = [{'boxes': torch.tensor([[16., 16., 47., 23.]]), 'gt_classes': torch.tensor([1]),
           'is_crowd': torch.tensor([False])}]
    im_info = torch.tensor([[32., 48., 1.]])
    out = rpn_anchor_targets([anchors], [(2, 3)], gt, im_info, rpn_params(straddle_thresh=0,
                             batch_size_per_im=4, fg_fraction=0.5),
                             generator=torch.Generator().manual_seed(0))[0]
    labels = out['rpn_labels_int32'][0]                   # (A, H, W)
    assert labels[1, 1, 1] == 1 and (labels == 1).sum() == 1
    # the 32-px anchors at w = 2 leave the 48-px-wide image: ignored
    assert (labels[1, :, 2] == -1).all()
    # 3 draws with replacement among the 7 inside anchors with IoU < 0.3 (the two 16 x 16
    # anchors over the box have IoU 1/3 and are neither positive nor negative)
    assert labels[0, 1, 1] == -1 and labels[0, 1, 2] == -1
    n_bg = int((labels == 0).sum())
    assert 1 <= n_bg <= 3
    # regression channels 4a..4a+3 of the positive anchor; zero deltas (identical box)
    assert torch.equal(out['rpn_bbox_inside_weights'][0, 4:8, 1, 1], torch.ones(4))
    assert out['rpn_bbox_inside_weights'][0].sum() == 4
    assert torch.allclose(out['rpn_bbox_outside_weights'][0, 4:8, 1, 1],
                          torch.full((4,), 1. / (1 + n_bg)))
    assert out['rpn_bbox_targets'].abs().sum() == 0
    # a shifted box gives the encoded offset in the positive's channels
    gt[0]['boxes'] = torch.tensor([[20., 16., 51., 23.]])
    out2 = rpn_anchor_targets([anchors], [(2, 3)], gt, im_info, rpn_params(straddle_thresh=0,
                              batch_size_per_im=4, fg_fraction=0.5))[0]
    assert out2['rpn_labels_int32'][0, 1, 1, 1] == 1
    assert torch.allclose(out2['rpn_bbox_targets'][0, 4:8, 1, 1],
                          torch.tensor([4. / 32., 0., 0., 0.]))
    # a negative straddle threshold keeps every anchor: the straddling (h=0, w=2, a=1) anchor,
    # IoU 0, is now a negative; only the two with IoU in [0.3, 0.7) stay ignored
    out = rpn_anchor_targets([anchors], [(2, 3)], gt, im_info, rpn_params(straddle_thresh=-1,
                             batch_size_per_im=100, fg_fraction=0.5))[0]
    labels = out['rpn_labels_int32'][0]
    assert labels[1, 0, 2] == 0 and (labels == -1).sum() == 2


def test_crowd_boxes_are_not_rpn_ground_truth():
    cell = torch.tensor([[0., 0., 15., 15.]])
    anchors = shifted_anchors(cell, 4, 4, 16)
    gt = [{'boxes': torch.tensor([[0., 0., 15., 15.], [32., 32., 47., 47.]]),
           'gt_classes': torch.tensor([1, 1]), 'is_crowd': torch.tensor([False, True])}]
    out = rpn_anchor_targets([anchors], [(4, 4)], gt, torch.tensor([[64., 64., 1.]]),
                             rpn_params(batch_size_per_im=1000, fg_fraction=1.0))[0]
    labels = out['rpn_labels_int32'][0, 0]
    assert labels[0, 0] == 1 and labels[2, 2] == 0 and (labels == 1).sum() == 1


def test_bad_inputs_name_the_argument():
    cell = torch.tensor([[0., 0., 15., 15.]])
    anchors = shifted_anchors(cell, 4, 4, 16)
    gt = [{'boxes': torch.zeros((0, 4)), 'gt_classes': torch.zeros(0, dtype=torch.long),
           'is_crowd': torch.zeros(0, dtype=torch.bool)}]
    with pytest.raises(ValueError, match='feature size'):
        rpn_anchor_targets([anchors], [(3, 4)], gt, torch.tensor([[64., 64., 1.]]), rpn_params())
    with pytest.raises(KeyError, match='gt_classes'):
        rpn_anchor_targets([anchors], [(4, 4)], [{'boxes': torch.zeros((0, 4))}],
                           torch.tensor([[64., 64., 1.]]), rpn_params())
    # an image without ground truth: every sampled anchor is negative
    out = rpn_anchor_targets([anchors], [(4, 4)], gt, torch.tensor([[64., 64., 1.]]),
                             rpn_params(batch_size_per_im=8))[0]
    assert (out['rpn_labels_int32'] == 1).sum() == 0 and (out['rpn_labels_int32'] == 0).sum() > 0
