"""Keypoint R-CNN training targets (Detectron's ``roi_data/keypoint_rcnn.py`` and
``utils/keypoints.keypoints_to_heatmap_labels``) on the device.

Keypoint RoIs are sampled apart from the Fast R-CNN sample, from all candidate RoIs of an image
(its gt boxes and proposals, ``fast_rcnn.label_proposals``): those with overlap >= ``FG_THRESH``
whose matched gt object has at least one visible keypoint (v > 0) inside the RoI (inclusive
bounds), at most ``round(FG_FRACTION * BATCH_SIZE_PER_IM)`` of them per image, chosen at random.

Each keypoint becomes one "class" among the HEATMAP_SIZE^2 heatmap cells (a softmax over space):
x maps to ``floor((x - x1) * scale_x)`` with ``scale_x = HEATMAP_SIZE / (x2 - x1)`` (no ``+1``;
Heckbert's d = floor(c); both in float32, that order, as Detectron's numpy), a keypoint exactly
on the right (bottom) edge goes to the last column (row), and it counts (weight 1) only if
visible and inside the grid. Computed at the original image scale, as Detectron: the roidb's
keypoints (the loader's ``gt_keypoints_orig``) in the RoIs' original-scale boxes (``labels.
boxes_orig``: the RPN's rois times 1 / im_scale, the gt boxes as the roidb holds them). In
exact arithmetic the map is scale-invariant; in float32 a keypoint on a cell boundary lands on
one side or the other depending on the scale, so the scale must be Detectron's. Without
``gt_keypoints_orig`` (a hand-built roidb) the blob-scale keypoints and RoIs are used.

Shapes: C candidate RoIs, G gt rows per image (padded), K keypoints, R_k keypoint RoIs,
HS = ``KRCNN.HEATMAP_SIZE``.

Outputs (a dict, Detectron's blob names):
    keypoint_rois              (R_k, 5) float32, blob scale
    keypoint_locations_int32   (R_k * K,) int32, cell index y * HS + x (0 where weight is 0)
    keypoint_weights           (R_k * K,) float32 in {0, 1}
    keypoint_loss_normalizer   () float32: #visible / (IMS_PER_BATCH * BATCH_SIZE_PER_IM *
                               FG_FRACTION * NUM_KEYPOINTS), the loss scale used when
                               ``KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS`` is off
    keypoint_minibatch_valid   () bool: R_k > 0 and #visible > ``KRCNN.
                               MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH`` (Detectron's loader
                               drops invalid minibatches; its end-to-end path ignores the flag.
                               Here a model without an RPN returns it as 'minibatch_valid' and
                               the trainer drops the minibatch: ``engine/trainer.py``)
"""
from collections import namedtuple

import torch

from pydetectron.modeling.targets.sampling import random_subset


class KeypointTargetParams(namedtuple("KeypointTargetParams", [
        "fg_thresh",            # TRAIN.FG_THRESH
        "fg_fraction",          # TRAIN.FG_FRACTION
        "batch_size_per_im",    # TRAIN.BATCH_SIZE_PER_IM
        "heatmap_size",         # KRCNN.HEATMAP_SIZE
        "min_keypoint_count",   # KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH
])):
    """The settings of ``keypoint_rcnn_targets``."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        t, k = cfg.TRAIN, cfg.KRCNN
        return cls(t.FG_THRESH, t.FG_FRACTION, int(t.BATCH_SIZE_PER_IM), int(k.HEATMAP_SIZE),
                   k.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH)


def keypoints_to_heatmap_labels(keypoints, rois, heatmap_size):
    """Heatmap cell labels and weights of (R, 3, K) ``keypoints`` (x, y, v) in (R, 4) ``rois``.

    Returns (R, K) int64 linear cell indices (y * HS + x; 0 when invalid) and (R, K) float32
    weights (1 for a visible keypoint inside the grid), as Detectron's function.
    """
    HS = int(heatmap_size)
    rois = rois.float()
    x1, y1 = rois[:, 0:1], rois[:, 1:2]                                     # (R, 1)
    x2, y2 = rois[:, 2:3], rois[:, 3:4]
    scale_x = HS / (x2 - x1)
    scale_y = HS / (y2 - y1)
    x = keypoints[:, 0].float()                                             # (R, K)
    y = keypoints[:, 1].float()
    vis = keypoints[:, 2] > 0
    # A keypoint on the right/bottom edge would floor to HS: keep it in the last cell.
    x_cell = torch.where(x == x2, float(HS - 1), torch.floor((x - x1) * scale_x))
    y_cell = torch.where(y == y2, float(HS - 1), torch.floor((y - y1) * scale_y))
    valid = (x_cell >= 0) & (y_cell >= 0) & (x_cell < HS) & (y_cell < HS) & vis
    lin = torch.where(valid, y_cell * HS + x_cell, torch.zeros_like(x_cell))
    return lin.long(), valid.to(torch.float32)


def keypoint_rcnn_targets(labels, gt, num_images, params, ims_per_batch=None, generator=None):
    """Detectron's keypoint blobs.

    labels: the ``ProposalLabels`` of ``fast_rcnn.label_proposals``; gt: the ``GtBatch`` (packed
    with keypoints) they were computed with; num_images: N. ``ims_per_batch`` (the normaliser's
    images per batch) defaults to N -- Detectron's ``TRAIN.IMS_PER_BATCH``, the images of one
    GPU's blob. params: a ``KeypointTargetParams``.
    """
    fg_thresh, fg_fraction = params.fg_thresh, params.fg_fraction
    batch_size_per_im = int(params.batch_size_per_im)
    heatmap_size, min_keypoint_count = params.heatmap_size, params.min_keypoint_count
    ims_per_batch = int(num_images if ims_per_batch is None else ims_per_batch)
    if gt.keypoints is None:
        raise ValueError('keypoint_rcnn_targets: the ground truth was packed without keypoints '
                         '(pack_gt(..., with_keypoints=True))')
    N, G, _, K = gt.keypoints.shape
    device = labels.rois.device

    gt_ind = labels.box_to_gt_ind_map.clamp(min=0)                           # (C,)
    if gt.keypoints_orig is not None and gt.boxes_orig is not None:
        # Detectron's scale: the roidb's keypoints in the original-scale candidate boxes
        kps = gt.keypoints_orig.view(N * G, 3, K)[gt_ind]                    # (C, 3, K)
        boxes = labels.boxes_orig
    else:
        kps = gt.keypoints.view(N * G, 3, K)[gt_ind]
        boxes = labels.rois[:, 1:5]
    inside = (kps[:, 0] >= boxes[:, 0:1]) & (kps[:, 0] <= boxes[:, 2:3]) \
        & (kps[:, 1] >= boxes[:, 1:2]) & (kps[:, 1] <= boxes[:, 3:4])
    has_visible = ((kps[:, 2] > 0) & inside).any(dim=1)
    cand = (labels.max_overlaps >= fg_thresh) & has_visible & (labels.box_to_gt_ind_map >= 0)

    fg_per_im = int(round(fg_fraction * batch_size_per_im))
    batch = labels.rois[:, 0].long()
    chosen = random_subset(cand, batch, fg_per_im, num_images, generator)
    inds = torch.nonzero(chosen, as_tuple=False).flatten()                   # host sync: R_k

    rois = labels.rois[inds]
    heats, weights = keypoints_to_heatmap_labels(kps[inds], boxes[inds], heatmap_size)
    num_visible = weights.sum()
    normalizer = num_visible / (ims_per_batch * batch_size_per_im * fg_fraction * K)
    valid = (num_visible > min_keypoint_count) & (inds.numel() > 0)
    return {
        'keypoint_rois': rois,
        'keypoint_locations_int32': heats.view(-1).to(torch.int32),
        'keypoint_weights': weights.view(-1),
        'keypoint_loss_normalizer': normalizer.to(torch.float32),
        'keypoint_minibatch_valid': valid,
    }
