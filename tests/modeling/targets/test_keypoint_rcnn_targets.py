"""Keypoint targets against Detectron's ``add_keypoint_rcnn_blobs`` / ``finalize_keypoint_minibatch``
/ ``keypoints_to_heatmap_labels`` (numpy, keypoint by keypoint) on coco_mini person keypoints."""
import numpy as np
import pytest
import torch

from _targets_coco import (
    batch, detectron_candidate_boxes, jittered_proposals, load_roidb, pick_entries)
from _params import fast_rcnn_params, keypoint_params
from pydetectron.modeling.targets import (
    keypoint_rcnn_targets, keypoints_to_heatmap_labels, label_proposals, pack_gt)

HS = 56


def _heatmap_reference(keypoints, rois, hs):
    """Detectron's loop over keypoints (float32 arithmetic)."""
    R, _, K = keypoints.shape
    heat = np.zeros((R, K), np.float32)
    weight = np.zeros((R, K), np.float32)
    ox, oy = rois[:, 0], rois[:, 1]
    sx = hs / (rois[:, 2] - rois[:, 0])
    sy = hs / (rois[:, 3] - rois[:, 1])
    for k in range(K):
        vis = keypoints[:, 2, k] > 0
        x = keypoints[:, 0, k].astype(np.float32)
        y = keypoints[:, 1, k].astype(np.float32)
        xb = np.where(x == rois[:, 2])[0]
        yb = np.where(y == rois[:, 3])[0]
        x = np.floor((x - ox) * sx)
        x[xb] = hs - 1
        y = np.floor((y - oy) * sy)
        y[yb] = hs - 1
        valid = (x >= 0) & (y >= 0) & (x < hs) & (y < hs) & vis
        heat[:, k] = np.where(valid, y * hs + x, 0)
        weight[:, k] = valid
    return heat, weight


@pytest.fixture(scope='module')
def kp_case(coco_mini):
    roidb = load_roidb(coco_mini, 'person_keypoints_train2017.json')
    entries = pick_entries(roidb, 2, min_gt=2, need_keypoints=True)
    scales = [0.6, 0.5]
    broidb, im_info = batch(entries, scales)
    rois = jittered_proposals(broidb, im_info, per_gt=16, seed=4)
    gt = pack_gt(broidb, 'cpu', with_keypoints=True)
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=0.))
    # Detectron's roidb boxes: the original gt boxes, the proposals times 1 / im_scale
    orig_boxes = detectron_candidate_boxes(entries, scales, rois, gt.valid.shape[1])
    return broidb, im_info, gt, lab, orig_boxes


def test_keypoint_targets_match_detectron(kp_case):
    broidb, im_info, gt, lab, orig_boxes = kp_case
    N, G, _, K = gt.keypoints.shape
    B, F = 64, 0.25
    out = keypoint_rcnn_targets(lab, gt, N, keypoint_params(fg_thresh=0.5, fg_fraction=F,
                                batch_size_per_im=B, heatmap_size=HS, min_keypoint_count=20),
                                generator=torch.Generator().manual_seed(0))
    # Detectron's candidate set: fg overlap and a visible keypoint of the matched gt in the box,
    # at the original scale (the roidb's keypoints and boxes)
    boxes = orig_boxes
    kps = gt.keypoints_orig.view(N * G, 3, K).numpy()[lab.box_to_gt_ind_map.numpy()]  # -1: last
    within = ((kps[:, 0] >= boxes[:, 0:1]) & (kps[:, 0] <= boxes[:, 2:3])
              & (kps[:, 1] >= boxes[:, 1:2]) & (kps[:, 1] <= boxes[:, 3:4]))
    visible = ((kps[:, 2] > 0) & within).sum(axis=1) > 0
    cand = (lab.max_overlaps.numpy() >= 0.5) & visible
    rois = out['keypoint_rois']
    sel = []
    for r in rois:      # recover the candidate rows of the sampled RoIs (unique boxes here)
        hit = np.where((lab.rois.numpy() == r.numpy()).all(axis=1))[0]
        sel.append(hit[0])
    sel = np.array(sel)
    assert cand[sel].all()
    for n in range(N):
        in_img = lab.rois[:, 0].numpy() == n
        assert (rois[:, 0] == n).sum() == min(int(round(F * B)), (cand & in_img).sum())
    heat, weight = _heatmap_reference(kps[sel], boxes[sel], HS)
    np.testing.assert_array_equal(out['keypoint_locations_int32'].numpy(), heat.reshape(-1))
    np.testing.assert_array_equal(out['keypoint_weights'].numpy(), weight.reshape(-1))
    assert out['keypoint_locations_int32'].dtype == torch.int32
    num_vis = weight.sum()
    assert num_vis > 0
    np.testing.assert_allclose(out['keypoint_loss_normalizer'].item(),
                               num_vis / (N * B * F * K), rtol=1e-6)
    assert bool(out['keypoint_minibatch_valid']) == (num_vis > 20)


def test_heatmap_edge_rule_hand_case():
    # roi [0, 10] x [0, 20], HEATMAP_SIZE 4: x maps with 4 / 10, y with 4 / 20
    rois = torch.tensor([[0., 0., 10., 20.]])
    kps = torch.tensor([[[0., 10., 5., 9.99, 11., 3., -0.5],        # x
                         [0., 20., 10., 19.99, 5., 5., 5.],         # y
                         [2., 1., 2., 2., 2., 0., 2.]]])            # v
    heat, w = keypoints_to_heatmap_labels(kps, rois, heatmap_size=4)
    # (0,0) -> cell 0; on the right/bottom edge -> last column/row (15); (5,10) -> (2,2) = 10;
    # just inside the edge -> (3,3) = 15; x beyond x2 -> invalid; invisible -> 0;
    # x < x1 -> floor(-0.2) = -1 -> invalid
    assert heat.tolist() == [[0, 15, 10, 15, 0, 0, 0]]
    assert w.tolist() == [[1., 1., 1., 1., 0., 0., 0.]]


def test_keypoints_on_cell_boundaries_land_where_detectron_puts_them():
    """A 56 x 56 gt box (original pixels) with HEATMAP_SIZE 56: integer keypoints sit exactly on
    cell boundaries, (x - x1) * (56 / 56) = an integer. Detectron computes at the original scale
    and floors that integer; at the blob scale 0.6 the same keypoint lands a float32 step below
    the boundary, one cell off (the blob rule is written out below to show the case bites)."""
    s = 0.6
    box = np.array([[10, 20, 66, 76]], np.float32)
    kx = np.array([11, 30, 47, 65, 66, 10, 40], np.float32)   # 66 = x2: Detectron's last column
    ky = np.array([21, 40, 63, 75, 50, 76, 20], np.float32)   # 76 = y2: last row
    kps = np.stack([kx, ky, np.full(7, 2, np.float32)])[None]  # (1, 3, 7)
    f = np.float32
    roidb = [{'boxes': torch.from_numpy(box * f(s)), 'boxes_orig': torch.from_numpy(box),
              'gt_classes': torch.tensor([1]), 'is_crowd': torch.tensor([False]),
              'gt_keypoints': torch.from_numpy(np.concatenate([kps[:, :2] * f(s), kps[:, 2:]],
                                                              axis=1)),
              'gt_keypoints_orig': torch.from_numpy(kps)}]
    im_info = torch.tensor([[60., 80., s]])
    gt = pack_gt(roidb, 'cpu', with_keypoints=True)
    lab = label_proposals(torch.zeros((0, 5)), gt, im_info,
                          fast_rcnn_params(crowd_filter_thresh=0.))
    out = keypoint_rcnn_targets(lab, gt, 1, keypoint_params(fg_thresh=0.5, fg_fraction=0.25,
                                batch_size_per_im=64, heatmap_size=HS, min_keypoint_count=0))
    # Detectron: scale 56 / 56 = 1, so the cell is exactly (ky - y1, kx - x1); the edge -> 55
    cx = np.where(kx == 66, 55, kx - 10)
    cy = np.where(ky == 76, 55, ky - 20)
    expected = (cy * HS + cx).astype(np.int32)
    ref, _ = _heatmap_reference(kps, box, HS)
    np.testing.assert_array_equal(ref.reshape(-1), expected)
    np.testing.assert_array_equal(out['keypoint_locations_int32'].numpy(), expected)
    assert out['keypoint_weights'].tolist() == [1.] * 7
    # the keypoint RoI blob: the original box times im_scale (float32), Detectron's
    # sampled_fg_rois *= im_scale
    np.testing.assert_array_equal(out['keypoint_rois'].numpy(),
                                  np.hstack([[[0.]], box * f(s)]).astype(np.float32))
    # the blob-scale evaluation of the same rule puts some keypoints a cell lower
    blob, _ = _heatmap_reference(kps * np.array([[[f(s)], [f(s)], [1]]], np.float32),
                                 box * f(s), HS)
    assert (blob.reshape(-1) != expected).sum() >= 3


def test_no_keypoint_roi_gives_empty_blobs_and_invalid_minibatch(kp_case):
    broidb, im_info, gt, lab, _ = kp_case
    empty = lab._replace(max_overlaps=torch.zeros_like(lab.max_overlaps))
    out = keypoint_rcnn_targets(empty, gt, 2, keypoint_params(heatmap_size=HS,
                                batch_size_per_im=64, fg_fraction=0.25, fg_thresh=0.5,
                                min_keypoint_count=20))
    assert out['keypoint_rois'].shape == (0, 5)
    assert out['keypoint_weights'].numel() == 0
    assert out['keypoint_loss_normalizer'].item() == 0
    assert not bool(out['keypoint_minibatch_valid'])
    with pytest.raises(ValueError, match='with_keypoints'):
        keypoint_rcnn_targets(lab, gt._replace(keypoints=None), 2,
                              keypoint_params(heatmap_size=HS))
