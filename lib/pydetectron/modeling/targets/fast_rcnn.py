"""Fast R-CNN training targets: label the proposals, sample the RoIs, build the box targets.

Detectron does this on the CPU with its data-loader code (``json_dataset.add_proposals``,
``roidb.add_bbox_regression_targets``, ``roi_data.fast_rcnn._sample_rois``); here the same steps
run for the whole batch on the device. Shapes: N images, G ground-truth boxes per image (padded,
see ``targets.gt``), R input proposals, C = N * G + R candidate RoIs, S sampled RoIs, K classes
(``MODEL.NUM_CLASSES``, background included).

1. ``label_proposals``: every image's ground-truth boxes -- crowd boxes included -- are added to
   its proposals (Detectron's roidb holds gt rows first). Overlaps and box targets are computed
   in the **original image scale**, as Detectron's training roidb holds it (with ``+1`` widths
   IoU is not scale-invariant): the proposals are the RPN's rois times ``1 / im_scale`` in
   float32 (``add_proposals``), the ground truth is the roidb's own boxes (``GtBatch.
   boxes_orig``, not the blob-scale boxes scaled back, which would move most of them by a
   rounding step). The output ``rois`` are then those original-scale boxes times ``im_scale``
   in float32, as ``_sample_rois`` builds its rois blob (``sampled_boxes * im_scale``). Without
   ``boxes_orig`` the ground truth is the blob-scale boxes times ``1 / im_scale`` and the rois
   stay as given. A proposal's ``max_overlaps`` is its best IoU
   over all the image's gt boxes (crowd included), ``max_classes`` that box's class and
   ``box_to_gt_ind_map`` its index (both only when the IoU is > 0; else 0 and -1). A gt row has
   overlap 1 with its own class, or -1 and class 0 if it is a crowd region (never sampled).
   With ``crowd_filter_thresh > 0`` proposals covered by a crowd region by more than that
   fraction (intersection over the proposal's area) get overlap -1. Detectron's end-to-end
   training does *not* filter (``add_proposals(..., crowd_thresh=0)``); it filters precomputed
   proposals with ``TRAIN.CROWD_FILTER_THRESH``, which is this function's default when
   ``MODEL.FASTER_RCNN`` is off.
   Box targets (``_compute_targets``): RoIs with overlap >= ``TRAIN.BBOX_THRESH`` regress to the
   non-crowd gt box they overlap most, ``bbox_transform_inv`` with ``MODEL.BBOX_REG_WEIGHTS``,
   for their ``max_classes`` (class 1 with ``MODEL.CLS_AGNOSTIC_BBOX_REG``).
2. ``sample_rois``: per image up to ``round(FG_FRACTION * BATCH_SIZE_PER_IM)`` random
   foreground RoIs (overlap >= ``FG_THRESH``), then random background RoIs (overlap in
   [``BG_THRESH_LO``, ``BG_THRESH_HI``)) up to ``BATCH_SIZE_PER_IM`` in all; labels are the
   fg RoIs' classes and 0 for bg; the box targets are expanded to the (S, 4K) class-specific
   layout (4 * 2 columns when class-agnostic) with inside weights 1 on the target's 4 columns
   and outside weights ``inside > 0``.
"""
from collections import namedtuple

import torch

from pydetectron.modeling.targets.gt import GtBatch, pack_gt
from pydetectron.modeling.targets.overlaps import box_ioa, box_iou
from pydetectron.modeling.targets.sampling import random_subset
from pydetectron.utils.boxes import bbox_transform_inv

# Every candidate RoI of the batch (C rows: the N * G padded gt rows first, then the proposals).
ProposalLabels = namedtuple('ProposalLabels', [
    'rois',               # (C, 5) float32 (batch index, x1, y1, x2, y2) in blob scale
    'is_gt',              # (C,) bool, a ground-truth row (padding rows are gt rows that never sample)
    'max_overlaps',       # (C,) float32; -1 for crowd rows (and filtered proposals), -inf for padding
    'max_classes',        # (C,) int64, 0 = background
    'box_to_gt_ind_map',  # (C,) int64 batch-wide gt index n * G + j, -1 for none
    'bbox_target_classes',  # (C,) int64, the class whose 4 box-target columns are active (0: none)
    'bbox_targets',       # (C, 4) float32, encoded with MODEL.BBOX_REG_WEIGHTS
    'boxes_orig',         # (C, 4) float32 the candidates at the original image scale (Detectron's
                          # roidb 'boxes'): the mask and keypoint targets are computed from these
])


class FastRcnnTargetParams(namedtuple("FastRcnnTargetParams", [
        "crowd_filter_thresh",    # 0 end to end (MODEL.FASTER_RCNN), else TRAIN.CROWD_FILTER_THRESH
        "bbox_thresh",            # TRAIN.BBOX_THRESH
        "bbox_reg_weights",       # MODEL.BBOX_REG_WEIGHTS, a 4-tuple
        "cls_agnostic_bbox_reg",  # MODEL.CLS_AGNOSTIC_BBOX_REG
        "fg_thresh",              # TRAIN.FG_THRESH
        "bg_thresh_hi",           # TRAIN.BG_THRESH_HI
        "bg_thresh_lo",           # TRAIN.BG_THRESH_LO
        "fg_fraction",            # TRAIN.FG_FRACTION
        "batch_size_per_im",      # TRAIN.BATCH_SIZE_PER_IM
        "num_classes",            # MODEL.NUM_CLASSES (background counted)
])):
    """The settings of ``label_proposals`` and ``sample_rois``."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        t, m = cfg.TRAIN, cfg.MODEL
        return cls(0. if m.FASTER_RCNN else t.CROWD_FILTER_THRESH, t.BBOX_THRESH,
                   tuple(m.BBOX_REG_WEIGHTS), m.CLS_AGNOSTIC_BBOX_REG, t.FG_THRESH,
                   t.BG_THRESH_HI, t.BG_THRESH_LO, t.FG_FRACTION, int(t.BATCH_SIZE_PER_IM),
                   int(m.NUM_CLASSES))


def _check_rois(rois):
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError('rois must be (R, 5) (batch index, x1, y1, x2, y2), got shape %s'
                         % (tuple(rois.shape),))


def label_proposals(rois, gt, im_info, params, rois_orig=None, rois_valid=None):
    """Detectron's roidb fields for the proposals ``rois`` plus the ground truth.

    rois: (R, 5) float (batch index, x1, y1, x2, y2) in blob scale, on the model's device.
    gt: a ``GtBatch`` or the loader's per-image ground-truth dicts; im_info: (N, 3).
    params: a ``FastRcnnTargetParams`` (its crowd / bbox fields are used here).
    rois_orig: (R, 4) the same proposals at the original scale when they come from the roidb
    (Fast R-CNN's precomputed proposals: the loader's ``boxes_orig`` rows); default: rois times
    ``1 / im_scale`` (the RPN's proposals, as ``add_proposals``).
    rois_valid: (R,) bool, False for padding rows of ``rois`` (the RPN's padded proposals):
    they get overlap -inf, class 0 and no gt box, so they are never sampled.
    Returns ``ProposalLabels`` (see the module docstring).
    """
    crowd_filter_thresh, bbox_thresh = params.crowd_filter_thresh, params.bbox_thresh
    bbox_reg_weights = tuple(params.bbox_reg_weights)
    cls_agnostic_bbox_reg = params.cls_agnostic_bbox_reg

    device = rois.device
    if not isinstance(gt, GtBatch):
        gt = pack_gt(gt, device)
    im_info = torch.as_tensor(im_info, device=device, dtype=torch.float32)
    N, G = gt.valid.shape
    _check_rois(rois)
    rois = rois.detach().float()

    # Candidates: the padded gt rows of every image, then the proposals.
    gt_batch = torch.arange(N, device=device, dtype=torch.float32).repeat_interleave(G)
    gt_rois = torch.cat([gt_batch.unsqueeze(1), gt.boxes.reshape(N * G, 4)], dim=1)
    cand = torch.cat([gt_rois, rois], dim=0)                                   # (C, 5)
    C = cand.shape[0]
    batch = cand[:, 0].long()
    is_gt = torch.zeros(C, dtype=torch.bool, device=device)
    is_gt[:N * G] = True

    # Original image scale. Proposals: times 1 / im_scale in float32, as add_proposals does
    # (1. / the float32 scale in double, then rounded: numpy's float32 array * float64 scalar).
    # Ground truth: the roidb's own boxes when the loader passed them.
    inv_scale = (1. / im_info[:, 2].double()).float()                          # (N,)
    if rois_orig is None:
        prop_orig = rois[:, 1:5] * inv_scale[rois[:, 0].long()].unsqueeze(1)   # (R, 4)
    else:
        if tuple(rois_orig.shape) != (rois.shape[0], 4):
            raise ValueError('rois_orig must be (R, 4) with R = %d rois, got shape %s'
                             % (rois.shape[0], tuple(rois_orig.shape)))
        prop_orig = rois_orig.detach().float()
    if gt.boxes_orig is not None:
        gt_orig = gt.boxes_orig                                                # (N, G, 4)
    else:
        gt_orig = gt.boxes * inv_scale.view(N, 1, 1)
    cand_orig = torch.cat([gt_orig.reshape(N * G, 4), prop_orig], dim=0)      # (C, 4)
    if gt.boxes_orig is not None:
        # Detectron's rois blob: sampled_boxes (original scale) * im_scale (float32)
        cand = torch.cat([cand[:, :1], cand_orig * im_info[batch, 2].unsqueeze(1)], dim=1)

    iou = box_iou(cand_orig.unsqueeze(1), gt_orig[batch]).squeeze(1)           # (C, G)
    gt_valid = gt.valid[batch]                                                 # (C, G)
    gt_crowd = gt.is_crowd[batch]
    # Proposals: best IoU over all of the image's gt boxes, crowd included (Detectron).
    iou_all = iou.masked_fill(~gt_valid, -1.)
    best, best_j = iou_all.max(dim=1)
    hit = best > 0
    best_flat = batch * G + best_j
    prop_overlap = torch.where(hit, best, best.new_zeros(()))
    prop_class = torch.where(hit, gt.classes.view(-1)[best_flat], 0)
    prop_gt = torch.where(hit, best_flat, -1)

    # gt rows: overlap 1 with their class, crowd rows -1 / class 0, padding never sampled.
    flat = torch.arange(C, device=device)
    row_valid = gt.valid.view(-1)
    row_crowd = gt.is_crowd.view(-1)
    gt_overlap = torch.where(row_crowd, -1., 1.).to(torch.float32)
    gt_overlap = torch.where(row_valid, gt_overlap, float('-inf'))
    gt_class = torch.where(row_valid & ~row_crowd, gt.classes.view(-1), 0)
    gt_ind = torch.where(row_valid, flat[:N * G], -1)

    max_overlaps = torch.cat([gt_overlap, prop_overlap[N * G:]])
    max_classes = torch.cat([gt_class, prop_class[N * G:]])
    box_to_gt = torch.cat([gt_ind, prop_gt[N * G:]])

    if crowd_filter_thresh > 0:
        ioa = box_ioa(cand_orig.unsqueeze(1), gt_orig[batch]).squeeze(1)      # (C, G)
        ioa = ioa.masked_fill(~(gt_valid & gt_crowd), -1.)
        covered = (ioa.max(dim=1).values > crowd_filter_thresh) & ~is_gt
        max_overlaps = torch.where(covered, -1., max_overlaps)
        max_classes = torch.where(covered, 0, max_classes)
    if rois_valid is not None:
        if tuple(rois_valid.shape) != (rois.shape[0],):
            raise ValueError('rois_valid must be (R,) with R = %d rois, got shape %s'
                             % (rois.shape[0], tuple(rois_valid.shape)))
        ok = torch.cat([is_gt[:N * G], rois_valid.to(device=device, dtype=torch.bool)])
        max_overlaps = torch.where(ok, max_overlaps, float('-inf'))
        max_classes = torch.where(ok, max_classes, 0)
        box_to_gt = torch.where(ok, box_to_gt, -1)

    # Box-regression targets toward the most overlapping non-crowd gt box.
    iou_nc = iou.masked_fill(~(gt_valid & ~gt_crowd), -1.)
    target_j = iou_nc.argmax(dim=1)
    has_nc_gt = (gt_valid & ~gt_crowd).any(dim=1)
    ex = (max_overlaps >= bbox_thresh) & has_nc_gt
    target_box = gt_orig[batch, target_j]                                      # (C, 4)
    targets = bbox_transform_inv(cand_orig, target_box, bbox_reg_weights)
    targets = torch.where(ex.unsqueeze(1), targets, targets.new_zeros(()))
    target_cls = torch.where(ex, 1 if cls_agnostic_bbox_reg else max_classes, 0)

    return ProposalLabels(cand, is_gt, max_overlaps, max_classes, box_to_gt,
                          target_cls.long(), targets, cand_orig)


def sample_rois(labels, num_images, params, generator=None, fixed_slots=False):
    """Sample each image's training RoIs from ``labels`` (a ``ProposalLabels``) with the
    sampling fields of ``params`` (a ``FastRcnnTargetParams``).

    ``fixed_slots``: no host synchronisation -- each image gets ``BATCH_SIZE_PER_IM`` rows
    (S = N x BATCH_SIZE_PER_IM), its sampled RoIs first, in the same order as without, then
    padding rows; ``roi_valid`` (S,) bool flags the RoIs, padding rows have label -1 and zero
    box weights (``losses.fast_rcnn_losses`` ignores them), and ``fg_count`` (N,) int64 gives
    each image's foreground RoIs (its first rows).

    Returns a dict of Detectron's blobs, RoIs image by image, each image's fg before its bg:
      rois (S, 5) float32 blob scale; labels_int32 (S,) int32;
      bbox_targets, bbox_inside_weights, bbox_outside_weights (S, 4 * K) float32 (K = 2 when
      class-agnostic); and, for the mask and keypoint targets, ``sampled_inds`` (S,) int64 (rows
      of ``labels``), ``box_to_gt_ind_map`` (S,) int64 and ``sampled_boxes`` (S, 4) float32, the
      RoIs at the original image scale (Detectron's ``sampled_boxes``).
    """
    fg_thresh, bg_thresh_hi, bg_thresh_lo = params.fg_thresh, params.bg_thresh_hi, \
        params.bg_thresh_lo
    batch_size_per_im = int(params.batch_size_per_im)
    num_classes = int(params.num_classes)
    cls_agnostic_bbox_reg = params.cls_agnostic_bbox_reg
    if num_classes < 2 and not cls_agnostic_bbox_reg:
        raise ValueError('sample_rois: num_classes (MODEL.NUM_CLASSES) must count the background '
                         'and at least one class, got %d' % num_classes)

    device = labels.rois.device
    batch = labels.rois[:, 0].long()
    overlaps = labels.max_overlaps
    fg_per_im = fg_rois_per_image(params)

    # One draw per candidate ranks both the fg and the bg candidates when the two sets are
    # disjoint (the subsets stay independent), so the draws of the first C candidates do not
    # depend on how many (padding) candidates follow them.
    C = overlaps.shape[0]
    u = torch.rand(C, dtype=torch.float64, device=device, generator=generator)
    fg = random_subset(overlaps >= fg_thresh, batch, fg_per_im, num_images, uniforms=u)
    fg_count = torch.zeros(num_images, dtype=torch.long, device=device).scatter_add_(
        0, batch, fg.long())                                                   # (N,)
    bg_cand = (overlaps < bg_thresh_hi) & (overlaps >= bg_thresh_lo) & ~fg
    if bg_thresh_hi > fg_thresh:   # the sets overlap: the bg draws must be fresh
        u = torch.rand(C, dtype=torch.float64, device=device, generator=generator)
    bg = random_subset(bg_cand, batch, batch_size_per_im - fg_count, num_images, uniforms=u)

    valid = None
    if fixed_slots and overlaps.shape[0] > 0:
        keep, valid = _fixed_slots(fg, bg, batch, num_images, batch_size_per_im)
    else:
        # The only host sync: the number of sampled RoIs. Order: image, then fg before bg.
        keep = torch.nonzero(fg | bg, as_tuple=False).flatten()
        order = torch.sort(batch[keep] * 2 + bg[keep].long(), stable=True).indices
        keep = keep[order]

    sampled_labels = torch.where(fg[keep], labels.max_classes[keep], 0)
    target_classes = labels.bbox_target_classes[keep]
    if valid is not None:
        sampled_labels = torch.where(valid, sampled_labels, -1)
        target_classes = torch.where(valid, target_classes, 0)
    num_reg = 2 if cls_agnostic_bbox_reg else num_classes
    bbox_targets, inside_w = expand_bbox_targets(labels.bbox_targets[keep], target_classes,
                                                 num_reg)
    extra = {}
    if valid is not None:
        extra = {'roi_valid': valid, 'fg_count': fg_count}
    return {**extra,
        'rois': labels.rois[keep],
        'labels_int32': sampled_labels.to(torch.int32),
        'bbox_targets': bbox_targets,
        'bbox_inside_weights': inside_w,
        'bbox_outside_weights': (inside_w > 0).to(inside_w.dtype),
        'sampled_inds': keep,
        'box_to_gt_ind_map': labels.box_to_gt_ind_map[keep],
        'sampled_boxes': labels.boxes_orig[keep],
    }


def fg_rois_per_image(params):
    """Detectron's foreground quota of an image's sample: round(FG_FRACTION x
    BATCH_SIZE_PER_IM) (``params``: a ``FastRcnnTargetParams`` or ``KeypointTargetParams``).
    Python's round() is numpy's round-half-to-even, which Detectron uses here."""
    return int(round(params.fg_fraction * int(params.batch_size_per_im)))


def _fixed_slots(fg, bg, batch, num_images, slots_per_im):
    """(N * slots_per_im,) candidate rows and validity flags: image n's sampled candidates
    (``fg | bg``, at most ``slots_per_im``) in rows n * slots_per_im + 0, 1, ..., fg before bg,
    each in candidate order (``sample_rois``' order), then padding rows (a valid candidate
    index, flagged False)."""
    chosen = fg | bg
    C = chosen.shape[0]
    device = chosen.device
    key = torch.where(chosen, batch * 2 + bg.long(), 2 * num_images)
    order = torch.sort(key, stable=True).indices
    count = torch.zeros(num_images, dtype=torch.long, device=device).scatter_add_(
        0, batch, chosen.long())                                               # (N,)
    start = torch.cumsum(count, 0) - count
    j = torch.arange(slots_per_im, device=device)
    pos = (start.unsqueeze(1) + j).clamp_(max=C - 1)                           # (N, B)
    valid = (j < count.unsqueeze(1)).view(-1)
    return order[pos.view(-1)], valid


def expand_bbox_targets(targets, classes, num_reg_classes):
    """(S, 4) targets and (S,) classes -> (S, 4 * num_reg_classes) targets and inside weights,
    non-zero only in the 4 columns of the class (none for class 0), as Detectron's
    ``_expand_bbox_targets``."""
    S = targets.shape[0]
    cols = classes.unsqueeze(1) * 4 + torch.arange(4, device=targets.device)  # (S, 4)
    active = (classes > 0).unsqueeze(1).expand(S, 4)
    out = targets.new_zeros((S, 4 * num_reg_classes))
    weights = targets.new_zeros((S, 4 * num_reg_classes))
    out.scatter_(1, cols, torch.where(active, targets, targets.new_zeros(())))
    weights.scatter_(1, cols, active.to(targets.dtype))
    return out, weights


def fast_rcnn_targets(rois, gt, im_info, params, generator=None, rois_orig=None):
    """``label_proposals`` then ``sample_rois`` with one ``FastRcnnTargetParams``; returns
    (blobs dict, ProposalLabels)."""
    if not isinstance(gt, GtBatch):
        gt = pack_gt(gt, rois.device)
    labels = label_proposals(rois, gt, im_info, params, rois_orig=rois_orig)
    blobs = sample_rois(labels, gt.valid.shape[0], params, generator=generator)
    return blobs, labels
