"""The targets on CUDA equal the CPU ones (deterministic parts), and run without host syncs
where the output size does not depend on the data."""
import math
import warnings

import numpy as np
import pytest
import torch

from _params import fast_rcnn_params, keypoint_params, rpn_params
from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import shifted_anchors
from pydetectron.modeling.targets import (
    keypoint_rcnn_targets, label_proposals, mask_rcnn_targets, pack_gt, pack_polygons,
    rpn_anchor_targets, sample_rois)

pytestmark = pytest.mark.cuda


def _synthetic_batch(seed=0, n_img=2, K=17, orig=False):
    rng = np.random.RandomState(seed)
    roidb, info, rois = [], [], []
    for n in range(n_img):
        h, w = 320 + 32 * n, 448
        G = 6 + n
        xy = rng.uniform(0, [w - 60, h - 60], (G, 2))
        wh = rng.uniform(20, 120, (G, 2))
        boxes = np.hstack([xy, np.minimum(xy + wh, [w - 1, h - 1])]).astype(np.float32)
        segms = []
        for b in boxes:
            a = np.sort(rng.uniform(0, 2 * np.pi, 12))
            c = (b[:2] + b[2:]) / 2
            r = (b[2:] - b[:2]) / 2
            segms.append([(c + r * np.stack([np.cos(a), np.sin(a)], 1)).astype(np.float32).ravel()])
        kps = np.zeros((G, 3, K), np.float32)
        kps[:, 0] = rng.uniform(boxes[:, 0:1], boxes[:, 2:3], (G, K))
        kps[:, 1] = rng.uniform(boxes[:, 1:2], boxes[:, 3:4], (G, K))
        kps[:, 2] = rng.randint(0, 3, (G, K))
        crowd = np.zeros(G, bool)
        crowd[-1] = True
        segms[-1] = {'size': [h, w], 'counts': b'0'}
        roidb.append({'boxes': torch.from_numpy(boxes), 'gt_classes': torch.arange(1, G + 1),
                      'is_crowd': torch.from_numpy(crowd), 'segms': segms,
                      'gt_keypoints': torch.from_numpy(kps)})
        if orig:  # the original-scale fields of the loader (scale 0.8)
            inv = np.float32(1.25)
            kps_orig = kps.copy()
            kps_orig[:, :2] *= inv
            roidb[-1].update(
                boxes_orig=torch.from_numpy(boxes * inv),
                gt_keypoints_orig=torch.from_numpy(kps_orig),
                segms_orig=[sg if isinstance(sg, dict) else [p * inv for p in sg] for sg in segms])
        info.append([h, w, 0.8])
        j = np.repeat(boxes, 30, 0) + rng.uniform(-15, 15, (30 * G, 4))
        rois.append(np.hstack([np.full((len(j), 1), n), j]))
    rois = np.concatenate(rois).astype(np.float32)
    rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3] + 1)
    return roidb, torch.tensor(info), torch.from_numpy(rois)


def _fpn_anchors(im_info, device):
    Hb = int(math.ceil(im_info[:, 0].max().item() / 32) * 32)
    Wb = int(math.ceil(im_info[:, 1].max().item() / 32) * 32)
    anchors, sizes = [], []
    for lvl in range(2, 7):
        cell = torch.as_tensor(generate_anchors(2 ** lvl, (32 * 2 ** (lvl - 2),), (0.5, 1, 2)),
                               dtype=torch.float32, device=device)
        H, W = Hb // 2 ** lvl, Wb // 2 ** lvl
        anchors.append(shifted_anchors(cell, H, W, 2 ** lvl))
        sizes.append((H, W))
    return anchors, sizes


@pytest.mark.parametrize('orig', [False, True])
def test_cuda_matches_cpu(orig):
    roidb, im_info, rois = _synthetic_batch(orig=orig)
    out = {}
    for dev in ('cpu', 'cuda'):
        anchors, sizes = _fpn_anchors(im_info, dev)
        gt = pack_gt(roidb, dev, with_keypoints=True)
        rpn = rpn_anchor_targets(anchors, sizes, gt, im_info.to(dev),
                                 rpn_params(batch_size_per_im=10 ** 6, fg_fraction=1.0))
        lab = label_proposals(rois.to(dev), gt, im_info.to(dev),
                              fast_rcnn_params(crowd_filter_thresh=0.7))
        gen = torch.Generator(device=dev).manual_seed(0)
        blobs = sample_rois(lab, 2, fast_rcnn_params(batch_size_per_im=128, num_classes=10),
                            generator=gen)
        kps = keypoint_rcnn_targets(lab, gt, 2, keypoint_params(batch_size_per_im=10 ** 4,
                                    fg_fraction=1.0, heatmap_size=56), generator=gen)
        out[dev] = (rpn, lab, blobs, kps, gt)
    (rpn_c, lab_c, blobs_c, kps_c, gt_c), (rpn_g, lab_g, blobs_g, kps_g, gt_g) = \
        out['cpu'], out['cuda']
    for a, b in zip(rpn_c, rpn_g):
        assert torch.equal(a['rpn_labels_int32'], b['rpn_labels_int32'].cpu())
        assert torch.allclose(a['rpn_bbox_targets'], b['rpn_bbox_targets'].cpu(), atol=1e-5)
    for f in lab_c._fields:
        assert torch.allclose(getattr(lab_c, f).float(), getattr(lab_g, f).cpu().float(),
                              atol=1e-5), f
    # keypoints: all candidates taken on both devices, in the same order
    for k in ('keypoint_rois', 'keypoint_locations_int32', 'keypoint_weights'):
        assert torch.equal(kps_c[k], kps_g[k].cpu()), k
    # masks for the same sampled RoIs
    rois_s, labels_s = blobs_c['rois'], blobs_c['labels_int32']
    boxes_s = blobs_c['sampled_boxes']
    m_c = mask_rcnn_targets(rois_s, labels_s, pack_polygons(roidb, gt_c.valid.shape[1], 'cpu'),
                            gt_c, im_info, resolution=28, rois_orig=boxes_s)
    m_g = mask_rcnn_targets(rois_s.cuda(), labels_s.cuda(),
                            pack_polygons(roidb, gt_g.valid.shape[1], 'cuda'), gt_g,
                            im_info.cuda(), resolution=28, rois_orig=boxes_s.cuda())
    for k in m_c:
        assert torch.equal(m_c[k], m_g[k].cpu()), k
    assert (m_c['masks_int32'] == 1).any()


def test_rpn_targets_do_not_sync_the_host():
    roidb, im_info, _ = _synthetic_batch()
    anchors, sizes = _fpn_anchors(im_info, 'cuda')
    gt = pack_gt(roidb, 'cuda')
    im_info = im_info.cuda()
    gen = torch.Generator(device='cuda').manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        rpn_anchor_targets(anchors, sizes, gt, im_info, rpn_params(), generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode('default')
