"""Fast R-CNN proposal labels and RoI sampling against a numpy reference that follows Detectron's
``add_proposals`` / ``_merge_proposal_boxes_into_roidb`` / ``_filter_crowd_proposals`` /
``_compute_targets`` / ``_sample_rois`` on real coco_mini ground truth."""
import numpy as np
import pycocotools.mask as COCOmask
import pytest
import torch

from _targets_coco import (
    batch, detectron_candidate_boxes, jittered_proposals, load_roidb, pick_entries)
from _params import fast_rcnn_params
from pydetectron.modeling.targets import (
    expand_bbox_targets, label_proposals, pack_gt, sample_rois)
from pydetectron.modeling.targets.fast_rcnn import fast_rcnn_targets
from pydetectron.utils.boxes import bbox_overlaps, bbox_transform_inv, xyxy_to_xywh

WEIGHTS = (10., 10., 5., 5.)


def _reference(entry, rois_blob, im_scale, crowd_thresh=0., bbox_thresh=0.5, agnostic=False):
    """One image's roidb rows (gt first, then proposals) as Detectron builds them in training."""
    gt_inds = np.where(entry['gt_classes'] > 0)[0]
    gt_boxes = entry['boxes'][gt_inds]
    gt_classes = entry['gt_classes'][gt_inds]
    crowd = entry['is_crowd'][gt_inds].astype(bool)
    props = rois_blob * np.float32(1. / im_scale)
    ov = bbox_overlaps(props, gt_boxes)
    argmax, amax = ov.argmax(axis=1), ov.max(axis=1)
    hit = amax > 0
    G = len(gt_inds)
    boxes = np.vstack([gt_boxes, props])
    max_ov = np.concatenate([np.where(crowd, -1., 1.), np.where(hit, amax, 0.)])
    max_cls = np.concatenate([np.where(crowd, 0, gt_classes), np.where(hit, gt_classes[argmax], 0)])
    to_gt = np.concatenate([np.arange(G), np.where(hit, argmax, -1)])
    if crowd_thresh > 0 and crowd.any():
        ious = COCOmask.iou(xyxy_to_xywh(props.astype(np.float64)),
                            xyxy_to_xywh(gt_boxes[crowd].astype(np.float64)),
                            [1] * int(crowd.sum()))
        bad = G + np.where(ious.max(axis=1) > crowd_thresh)[0]
        max_ov[bad] = -1
        max_cls[bad] = 0
    targets = np.zeros((len(boxes), 5), np.float32)
    nc = np.where(~crowd)[0]
    ex = np.where(max_ov >= bbox_thresh)[0]
    if len(nc):
        assign = bbox_overlaps(boxes[ex], boxes[nc]).argmax(axis=1)
        targets[ex, 0] = 1 if agnostic else max_cls[ex]
        targets[ex, 1:] = bbox_transform_inv(boxes[ex].astype(np.float64),
                                             boxes[nc[assign]].astype(np.float64), WEIGHTS)
    return dict(max_overlaps=max_ov, max_classes=max_cls, box_to_gt=to_gt, targets=targets)


@pytest.fixture(scope='module')
def coco_case(coco_mini):
    roidb = load_roidb(coco_mini)
    entries = pick_entries(roidb, 1, min_gt=3, need_crowd=True) \
        + pick_entries(roidb[30:], 1, min_gt=4)
    scales = [0.6, 0.5]
    batch_roidb, im_info = batch(entries, scales)
    rois = jittered_proposals(batch_roidb, im_info, seed=1)
    # mix the images' proposals: the function must not rely on their order
    rois = rois[torch.randperm(rois.shape[0], generator=torch.Generator().manual_seed(0))]
    return entries, scales, batch_roidb, im_info, rois


def _split(labels, gt, rois, n):
    """Rows of image n in the function's output, in the reference's order (gt, then proposals)."""
    G = gt.valid.shape[1]
    n_gt = int(gt.valid[n].sum())
    N = gt.valid.shape[0]
    props = N * G + torch.nonzero(rois[:, 0] == n).flatten()
    return torch.cat([torch.arange(n * G, n * G + n_gt), props])


@pytest.mark.parametrize('crowd_thresh,agnostic', [(0., False), (0.7, False), (0., True)])
def test_labels_match_detectron_roidb(coco_case, crowd_thresh, agnostic):
    entries, scales, roidb, im_info, rois = coco_case
    gt = pack_gt(roidb, 'cpu')
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=crowd_thresh,
                          bbox_thresh=0.5, bbox_reg_weights=WEIGHTS,
                          cls_agnostic_bbox_reg=agnostic))
    N, G = gt.valid.shape
    for n, (entry, s) in enumerate(zip(entries, scales)):
        rows = _split(lab, gt, rois, n)
        props = rois[rows[int(gt.valid[n].sum()):] - N * G][:, 1:].numpy()
        ref = _reference(entry, props, s, crowd_thresh, agnostic=agnostic)
        np.testing.assert_allclose(lab.max_overlaps[rows].numpy(), ref['max_overlaps'],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(lab.max_classes[rows].numpy(), ref['max_classes'])
        to_gt = lab.box_to_gt_ind_map[rows].numpy()
        np.testing.assert_array_equal(np.where(to_gt >= 0, to_gt - n * G, -1), ref['box_to_gt'])
        np.testing.assert_array_equal(lab.bbox_target_classes[rows].numpy(), ref['targets'][:, 0])
        np.testing.assert_allclose(lab.bbox_targets[rows].numpy(), ref['targets'][:, 1:],
                                   rtol=1e-4, atol=2e-4)
        # the rois themselves: gt boxes and proposals in blob scale
        assert torch.equal(lab.rois[rows, 0], torch.full((len(rows),), float(n)))
    if crowd_thresh == 0:
        # Detectron's end-to-end path labels proposals over crowd boxes with the crowd's class
        crowd_rows = lab.box_to_gt_ind_map >= 0
        crowd_rows &= gt.is_crowd.view(-1)[lab.box_to_gt_ind_map.clamp(min=0)] & ~lab.is_gt
        assert (lab.max_overlaps[crowd_rows] >= 0.5).any()
    else:
        assert (lab.max_overlaps[~lab.is_gt] == -1).any()
    # padding rows are never sampled
    assert torch.isinf(lab.max_overlaps[:N * G][~gt.valid.view(-1)]).all()


def _iou_float32(a, b):
    """cython_bbox.bbox_overlaps: float32 arithmetic, +1 widths, (A, B)."""
    one = np.float32(1)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    inter = iw * ih
    ua = area_a[:, None] + area_b[None, :] - inter
    return np.where((iw > 0) & (ih > 0), inter / ua, np.float32(0)).astype(np.float32)


def _bbox_transform_inv_float32(ex, gt, weights):
    """Detectron's box_utils.bbox_transform_inv on float32 arrays (numpy keeps float32)."""
    f = np.float32
    ex_w = ex[:, 2] - ex[:, 0] + f(1)
    ex_h = ex[:, 3] - ex[:, 1] + f(1)
    ex_x = ex[:, 0] + f(0.5) * ex_w
    ex_y = ex[:, 1] + f(0.5) * ex_h
    gt_w = gt[:, 2] - gt[:, 0] + f(1)
    gt_h = gt[:, 3] - gt[:, 1] + f(1)
    gt_x = gt[:, 0] + f(0.5) * gt_w
    gt_y = gt[:, 1] + f(0.5) * gt_h
    wx, wy, ww, wh = (f(w) for w in weights)
    return np.stack([wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h,
                     ww * np.log(gt_w / ex_w), wh * np.log(gt_h / ex_h)], axis=1)


@pytest.mark.parametrize('precomputed', [False, True])
def test_box_targets_at_the_original_scale_as_detectron(coco_case, precomputed):
    """Detectron regresses the proposals (rois / im_scale) against the roidb's own gt boxes, all in
    float32 (json_dataset.add_proposals, roidb._compute_targets), and its rois blob is those
    original-scale boxes times im_scale. The loader's boxes_orig make that exact; the blob
    round trip (boxes * s) * (1 / s) moved targets by up to ~1e-4. ``precomputed``: Fast R-CNN's
    proposals from the roidb (original pixels, here rounded to 0.01 as a proposal file has them)
    are labelled as they are, not as their blob-scale copy scaled back."""
    entries, scales, roidb, im_info, rois = coco_case
    gt = pack_gt(roidb, 'cpu')
    assert gt.boxes_orig is not None
    N, G = gt.valid.shape
    rois_orig = None
    if precomputed:
        s32 = np.array([np.float32(s) for s in scales], np.float32)[rois[:, 0].long().numpy()]
        rois_orig = np.round(detectron_candidate_boxes(entries, scales, rois, G)[N * G:], 2)
        rois_orig = rois_orig.astype(np.float32)
        rois = torch.cat([rois[:, :1], torch.from_numpy(rois_orig * s32[:, None])], dim=1)
        inv = np.float32(1.) / s32[:, None]
        assert ((rois[:, 1:].numpy() * inv) != rois_orig).any()   # the round trip would move some
        rois_orig = torch.from_numpy(rois_orig)
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=0.,
                          bbox_thresh=0.5, bbox_reg_weights=WEIGHTS, cls_agnostic_bbox_reg=False),
                          rois_orig=rois_orig)
    cand = detectron_candidate_boxes(entries, scales, rois, G)
    if precomputed:
        cand[N * G:] = rois_orig.numpy()
    np.testing.assert_array_equal(lab.boxes_orig.numpy(), cand)
    batch_of = lab.rois[:, 0].long().numpy()
    s32 = np.array([np.float32(s) for s in scales], np.float32)
    np.testing.assert_array_equal(lab.rois[:, 1:].numpy(), cand * s32[batch_of][:, None])
    checked = 0
    for n, entry in enumerate(entries):
        rows = _split(lab, gt, rois, n).numpy()
        gt_inds = np.where(entry['gt_classes'] > 0)[0]
        boxes = cand[rows]
        gt_boxes = entry['boxes'][gt_inds].astype(np.float32)
        crowd = entry['is_crowd'][gt_inds].astype(bool)
        n_gt = len(gt_inds)
        ov = _iou_float32(boxes[n_gt:], gt_boxes)
        max_ov = np.concatenate([np.where(crowd, -1., 1.), np.where(ov.max(1) > 0, ov.max(1), 0)])
        np.testing.assert_allclose(lab.max_overlaps[rows].numpy(), max_ov, rtol=0, atol=1.2e-7)
        ex = np.where(lab.max_overlaps[rows].numpy() >= 0.5)[0]
        nc = np.where(~crowd)[0]
        assign = _iou_float32(boxes[ex], gt_boxes[nc]).argmax(axis=1)
        ref = _bbox_transform_inv_float32(boxes[ex], gt_boxes[nc[assign]], WEIGHTS)
        got = lab.bbox_targets[rows].numpy()[ex]
        # the same float32 formula: dx, dy bit for bit; dw, dh up to the last bits of the two
        # libraries' float32 log (numpy's and torch's)
        np.testing.assert_array_equal(got[:, :2], ref[:, :2])
        np.testing.assert_allclose(got[:, 2:], ref[:, 2:], rtol=0, atol=1e-6)
        checked += len(ex)
    assert checked > 50


@pytest.mark.parametrize('batch_size,agnostic', [(64, False), (16, True)])
def test_sampling_counts_membership_and_blobs(coco_case, batch_size, agnostic):
    entries, scales, roidb, im_info, rois = coco_case
    gt = pack_gt(roidb, 'cpu')
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=0.,
                          bbox_thresh=0.5, bbox_reg_weights=WEIGHTS,
                          cls_agnostic_bbox_reg=agnostic))
    K = 81
    out = sample_rois(lab, 2, fast_rcnn_params(fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.0,
                      fg_fraction=0.25, batch_size_per_im=batch_size, num_classes=K,
                      cls_agnostic_bbox_reg=agnostic), generator=torch.Generator().manual_seed(1))
    inds = out['sampled_inds']
    batch_of = out['rois'][:, 0].long()
    assert torch.equal(out['rois'], lab.rois[inds])
    assert (batch_of[1:] >= batch_of[:-1]).all()                   # image by image
    fg_quota = int(round(0.25 * batch_size))
    for n in range(2):
        mine = inds[batch_of == n]
        ov = lab.max_overlaps[mine]
        in_img = lab.rois[:, 0] == n
        n_fg = int(((lab.max_overlaps >= 0.5) & in_img).sum())
        n_bg = int(((lab.max_overlaps < 0.5) & (lab.max_overlaps >= 0) & in_img).sum())
        fg = ov >= 0.5
        assert fg.sum() == min(fg_quota, n_fg)
        assert (~fg).sum() == min(batch_size - int(fg.sum()), n_bg)
        assert (ov[~fg] >= 0).all() and (ov[~fg] < 0.5).all()
        k = int(fg.sum())
        assert fg[:k].all() and not fg[k:].any()                      # fg first
        assert len(set(mine.tolist())) == len(mine)                   # without replacement
    labels = out['labels_int32'].long()
    fg = lab.max_overlaps[inds] >= 0.5
    assert torch.equal(labels[fg], lab.max_classes[inds][fg]) and (labels[~fg] == 0).all()
    assert (labels[fg] > 0).all()
    # expanded targets, as Detectron's _expand_bbox_targets loop
    C = 2 if agnostic else K
    assert out['bbox_targets'].shape == (len(inds), 4 * C)
    exp_t = np.zeros((len(inds), 4 * C), np.float32)
    exp_w = np.zeros_like(exp_t)
    cls = lab.bbox_target_classes[inds].numpy()
    for i in np.where(cls > 0)[0]:
        exp_t[i, 4 * cls[i]:4 * cls[i] + 4] = lab.bbox_targets[inds[i]].numpy()
        exp_w[i, 4 * cls[i]:4 * cls[i] + 4] = 1
    np.testing.assert_array_equal(out['bbox_targets'].numpy(), exp_t)
    np.testing.assert_array_equal(out['bbox_inside_weights'].numpy(), exp_w)
    np.testing.assert_array_equal(out['bbox_outside_weights'].numpy(), exp_w)
    if agnostic:
        assert (cls[fg.numpy()] == 1).all()


@pytest.mark.parametrize('batch_size', [64, 4096])
def test_fixed_slots_hold_the_unpadded_sample(coco_case, batch_size):
    """``fixed_slots``: B rows per image; the valid ones are the unpadded sample in its order
    (same generator), padding rows label -1 with no box weights. B = 64 fills every row; at
    4096 every image has fewer candidates than rows. Padded proposals (``rois_valid`` False)
    are never sampled."""
    entries, scales, roidb, im_info, rois = coco_case
    gt = pack_gt(roidb, 'cpu')
    fp = fast_rcnn_params(crowd_filter_thresh=0.)
    lab = label_proposals(rois, gt, im_info, fp)
    params = fast_rcnn_params(batch_size_per_im=batch_size, num_classes=81)
    compact = sample_rois(lab, 2, params, generator=torch.Generator().manual_seed(4))
    fixed = sample_rois(lab, 2, params, generator=torch.Generator().manual_seed(4),
                        fixed_slots=True)
    valid = fixed['roi_valid']
    assert valid.shape == (2 * batch_size,) and 'roi_valid' not in compact
    assert int(valid.sum()) == compact['rois'].shape[0]
    assert bool(valid.all()) == (batch_size == 64)      # full at 64, mostly padding at 4096
    for key in compact:
        assert torch.equal(fixed[key][valid], compact[key]), key
    # each image's rows first: image 0's sample in rows [0, count_0), image 1's from B
    counts = [int((compact['rois'][:, 0] == n).sum()) for n in range(2)]
    assert valid.view(2, batch_size).sum(1).tolist() == counts
    assert valid.view(2, batch_size)[:, :min(counts)].all()
    assert (fixed['labels_int32'][~valid] == -1).all()
    assert (fixed['bbox_inside_weights'][~valid] == 0).all()
    assert (fixed['bbox_outside_weights'][~valid] == 0).all()
    fg = [int((compact['labels_int32'][compact['rois'][:, 0] == n] > 0).sum()) for n in range(2)]
    assert fixed['fg_count'].tolist() == fg
    # the same proposals padded with dropped rows (flagged, anywhere): the same sample
    junk = rois[:40].clone()
    junk[:, 1:] += 3.
    padded = torch.cat([rois, junk])
    flags = torch.cat([torch.ones(rois.shape[0], dtype=torch.bool),
                       torch.zeros(40, dtype=torch.bool)])
    lab_p = label_proposals(padded, gt, im_info, fp, rois_valid=flags)
    n_cand = lab.rois.shape[0]
    assert torch.isinf(lab_p.max_overlaps[n_cand:]).all()
    assert (lab_p.box_to_gt_ind_map[n_cand:] == -1).all()
    assert (lab_p.max_classes[n_cand:] == 0).all()
    again = sample_rois(lab_p, 2, params, generator=torch.Generator().manual_seed(4),
                        fixed_slots=True)
    assert (again['sampled_inds'][again['roi_valid']] < n_cand).all()
    for key in compact:
        assert torch.equal(again[key][again['roi_valid']], compact[key]), key


def test_sampling_is_uniform_and_reproducible(coco_case):
    entries, scales, roidb, im_info, rois = coco_case
    gt = pack_gt(roidb, 'cpu')
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params())
    params = fast_rcnn_params(batch_size_per_im=32, num_classes=81)
    a = sample_rois(lab, 2, params, generator=torch.Generator().manual_seed(5))
    b = sample_rois(lab, 2, params, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every fg candidate of image 0 is drawn about equally often (8 of n_fg per draw)
    fg0 = torch.nonzero((lab.max_overlaps >= 0.5) & (lab.rois[:, 0] == 0)).flatten()
    hits = torch.zeros(lab.rois.shape[0])
    g = torch.Generator().manual_seed(6)
    T = 300
    for _ in range(T):
        hits[sample_rois(lab, 2, params, generator=g)['sampled_inds']] += 1
    p = 8. / len(fg0)
    freq = hits[fg0] / T
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / T) ** 0.5 + 1e-6


def test_gt_only_and_convenience_wrapper():
    roidb = [{'boxes': torch.tensor([[10., 10., 40., 50.], [60., 5., 90., 30.]]),
              'gt_classes': torch.tensor([2, 1]), 'is_crowd': torch.tensor([False, False])}]
    im_info = torch.tensor([[100., 100., 1.]])
    blobs, lab = fast_rcnn_targets(torch.zeros((0, 5)), roidb, im_info,
                                   fast_rcnn_params(num_classes=3, crowd_filter_thresh=0.))
    # no proposals: the two gt boxes are the only (fg) RoIs, with zero box targets
    assert torch.equal(blobs['labels_int32'], torch.tensor([2, 1], dtype=torch.int32))
    assert torch.equal(blobs['rois'][:, 1:], roidb[0]['boxes'])
    assert blobs['bbox_targets'].abs().sum() == 0
    assert torch.equal(blobs['bbox_inside_weights'][0], torch.tensor([0.] * 8 + [1.] * 4))
    assert torch.equal(blobs['box_to_gt_ind_map'], torch.tensor([0, 1]))


def test_expand_bbox_targets_hand_case():
    t = torch.tensor([[1., 2., 3., 4.], [5., 6., 7., 8.]])
    out, w = expand_bbox_targets(t, torch.tensor([2, 0]), 3)
    assert torch.equal(out, torch.tensor([[0.] * 8 + [1., 2., 3., 4.], [0.] * 12]))
    assert torch.equal(w, torch.tensor([[0.] * 8 + [1.] * 4, [0.] * 12]))


def test_bad_rois_shape():
    roidb = [{'boxes': torch.zeros((0, 4)), 'gt_classes': torch.zeros(0, dtype=torch.long),
              'is_crowd': torch.zeros(0, dtype=torch.bool)}]
    with pytest.raises(ValueError, match=r'rois must be \(R, 5\)'):
        label_proposals(torch.zeros((3, 4)), roidb, torch.tensor([[10., 10., 1.]]),
                        fast_rcnn_params())
