"""RPN training targets: anchor labels, regression targets and loss weights (Detectron's
``roi_data/rpn.py``), computed for every image of the batch at once on the anchors' device.

Shapes: N images, G ground-truth boxes (padded, see ``targets.gt``), per level l a feature map
H_l x W_l with A anchors per cell, T = sum_l H_l * W_l * A anchors in all.

Anchors come in Detectron's field-of-anchors order: cell (h, w) major, cell anchor a minor, i.e.
row ``(h * W + w) * A + a`` -- the order of ``anchors + shifts`` in Detectron's
``get_field_of_anchors`` and of the proposal generator. The outputs have the layout of the RPN
head's outputs: labels (N, A, H, W) like ``rpn_cls_logits``, regression blobs (N, 4A, H, W) with
channel ``4 * a + k`` like ``rpn_bbox_pred``.

Labelling, per image (Detectron's ``_get_rpn_blobs``):
  * anchors not inside the image by ``TRAIN.RPN_STRADDLE_THRESH`` pixels are ignored (-1);
    a negative threshold keeps every anchor;
  * the ground truth is the image's non-crowd boxes (``gt_classes > 0``, not crowd); crowd
    regions play no part in RPN labels, as in Detectron;
  * positive (1): for each gt box, every inside anchor whose IoU equals that box's best IoU over
    the inside anchors (ties included; Detectron applies this even when the best IoU is 0), and
    every anchor with max IoU >= ``TRAIN.RPN_POSITIVE_OVERLAP``;
  * at most ``int(RPN_FG_FRACTION * RPN_BATCH_SIZE_PER_IM)`` positives, chosen at random;
  * negatives (0): ``RPN_BATCH_SIZE_PER_IM - #positives`` draws *with replacement* among the
    inside anchors with max IoU < ``TRAIN.RPN_NEGATIVE_OVERLAP`` -- a positive anchor drawn here
    becomes negative, as in Detectron;
  * regression targets ``bbox_transform_inv(anchor, best gt, (1, 1, 1, 1))`` on positives; inside
    weights 1 on positives; outside weights ``1 / #labelled anchors of the image`` on positives
    and negatives.
For FPN the anchors of all levels are labelled jointly, then split per level (Detectron).
The settings come in an ``RpnTargetParams`` (read from the config once, where the model is built).

Detectron labels a field of anchors covering ``TRAIN.MAX_SIZE`` and narrows it to the feature
map in the loss; labelling the feature map's anchors directly is the same whenever the straddle
threshold is >= 0 (every anchor inside the image has its cell on the feature map).
"""
from collections import namedtuple

import torch

from pydetectron.modeling.targets.gt import GtBatch, pack_gt
from pydetectron.modeling.targets.overlaps import box_iou
from pydetectron.modeling.targets.sampling import draws_with_replacement, random_subset
from pydetectron.utils.boxes import bbox_transform_inv


class RpnTargetParams(namedtuple("RpnTargetParams", [
        "straddle_thresh", "positive_overlap", "negative_overlap", "fg_fraction",
        "batch_size_per_im"])):
    """The TRAIN.RPN_* settings of the RPN targets (field names: the keys in lower case)."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        t = cfg.TRAIN
        return cls(t.RPN_STRADDLE_THRESH, t.RPN_POSITIVE_OVERLAP, t.RPN_NEGATIVE_OVERLAP,
                   t.RPN_FG_FRACTION, int(t.RPN_BATCH_SIZE_PER_IM))


def _check_levels(anchors, feature_sizes):
    if torch.is_tensor(anchors):
        anchors = [anchors]
    if len(anchors) != len(feature_sizes):
        raise ValueError('rpn_anchor_targets: %d anchor tensors but %d feature_sizes'
                         % (len(anchors), len(feature_sizes)))
    counts = []
    for l, (a, hw) in enumerate(zip(anchors, feature_sizes)):
        H, W = int(hw[0]), int(hw[1])
        if a.dim() != 2 or a.shape[1] != 4 or H * W == 0 or a.shape[0] % (H * W) != 0:
            raise ValueError('rpn_anchor_targets: anchors[%d] must be (H * W * A, 4) for the '
                             'feature size %s, got shape %s' % (l, (H, W), tuple(a.shape)))
        counts.append((H, W, a.shape[0] // (H * W)))
    return list(anchors), counts


def rpn_anchor_targets(anchors, feature_sizes, gt, im_info, params, generator=None):
    """Detectron's RPN blobs for a batch.

    anchors: (H * W * A, 4) tensor, or a list of them, one per FPN level (finest first), in
        blob coordinates on the model's device.
    feature_sizes: list of (H_l, W_l), the spatial size of each level's RPN output.
    gt: a ``GtBatch`` or the loader's list of per-image ground-truth dicts (blob scale).
    im_info: (N, 3) float (blob height, blob width, im_scale) of each image (before padding).
    params: an ``RpnTargetParams``; ``generator`` is a ``torch.Generator`` on the anchors' device
    (global RNG if None).

    Returns a list with one dict per level of Detectron's blobs (without the ``_wide`` suffix):
    ``rpn_labels_int32`` (N, A, H, W) int32 in {-1, 0, 1}, ``rpn_bbox_targets``,
    ``rpn_bbox_inside_weights``, ``rpn_bbox_outside_weights`` (N, 4A, H, W) float32.
    """
    flat = rpn_anchor_targets_flat(anchors, feature_sizes, gt, im_info, params, generator)
    N = flat['labels'].shape[0]
    blobs, start = [], 0
    for H, W, A in flat['level_shapes']:
        end = start + H * W * A
        blobs.append({
            'rpn_labels_int32':
                flat['labels'][:, start:end].view(N, H, W, A).permute(0, 3, 1, 2).to(torch.int32),
            'rpn_bbox_targets': _to_head_layout(flat['targets'][:, start:end], H, W, A),
            'rpn_bbox_inside_weights': _to_head_layout(flat['inside_w'][:, start:end], H, W, A),
            'rpn_bbox_outside_weights': _to_head_layout(flat['outside_w'][:, start:end], H, W, A),
        })
        start = end
    return blobs


def rpn_anchor_targets_flat(anchors, feature_sizes, gt, im_info, params, generator=None):
    """The RPN targets of ``rpn_anchor_targets`` in anchor order, all levels together (what the
    losses use; no per-level reshaping): a dict with ``labels`` (N, T) int64 in {-1, 0, 1},
    ``targets``, ``inside_w``, ``outside_w`` (N, T, 4) float32 (T anchors of all levels, level
    by level, each in (H, W, A) order) and ``level_shapes`` [(H, W, A)] per level."""
    straddle_thresh, positive_overlap, negative_overlap, fg_fraction, batch_size_per_im = params
    batch_size_per_im = int(batch_size_per_im)

    anchors, level_shapes = _check_levels(anchors, feature_sizes)
    all_anchors = torch.cat(anchors, dim=0).float()                         # (T, 4)
    device = all_anchors.device
    if not isinstance(gt, GtBatch):
        gt = pack_gt(gt, device)
    im_info = torch.as_tensor(im_info, device=device, dtype=torch.float32)
    N, T = im_info.shape[0], all_anchors.shape[0]
    if gt.boxes.shape[0] != N:
        raise ValueError('rpn_anchor_targets: %d images in im_info but %d in the ground truth'
                         % (N, gt.boxes.shape[0]))

    # Anchors inside each image (by the straddle margin): (N, T)
    if straddle_thresh >= 0:
        s = float(straddle_thresh)
        im_h, im_w = im_info[:, 0:1], im_info[:, 1:2]
        inside = ((all_anchors[:, 0] >= -s) & (all_anchors[:, 1] >= -s)).unsqueeze(0) \
            & (all_anchors[:, 2].unsqueeze(0) < im_w + s) \
            & (all_anchors[:, 3].unsqueeze(0) < im_h + s)
    else:
        inside = torch.ones((N, T), dtype=torch.bool, device=device)

    gt_ok = gt.valid & ~gt.is_crowd                                         # (N, G)
    iou = box_iou(all_anchors.unsqueeze(0), gt.boxes)                       # (N, T, G)
    iou.masked_fill_(~gt_ok.unsqueeze(1), -1.)     # padding / crowd columns never match
    anchor_max, anchor_argmax = iou.max(dim=2)                              # (N, T)
    # Each gt box's best IoU over the inside anchors, and all inside anchors that reach it.
    gt_max = torch.where(inside.unsqueeze(2), iou, iou.new_full((), -1.)).amax(dim=1)  # (N, G)
    is_gt_best = ((iou == gt_max.unsqueeze(1)) & gt_ok.unsqueeze(1)).any(dim=2) & inside
    del iou

    # Labels are built with torch.where (no boolean-mask indexing: it would sync the host).
    fg = is_gt_best | (inside & (anchor_max >= positive_overlap))

    # Subsample positives: keep a random int(fg_fraction * batch) of them per image.
    num_fg = int(fg_fraction * batch_size_per_im)
    image_of = torch.arange(N, device=device).repeat_interleave(T)
    fg = random_subset(fg.flatten(), image_of, num_fg, N, generator).view(N, T)

    # Negatives: draws with replacement among low-IoU inside anchors (may override a positive).
    num_bg = batch_size_per_im - fg.sum(dim=1)                               # (N,)
    bg_cand = inside & (anchor_max < negative_overlap)
    bg = draws_with_replacement(bg_cand, num_bg, batch_size_per_im, generator)
    fg &= ~bg
    labels = torch.where(bg, 0, torch.where(fg, 1, -1))                      # (N, T) int64
    gt_of_anchor = torch.gather(gt.boxes, 1, anchor_argmax.unsqueeze(2).expand(N, T, 4))
    targets = bbox_transform_inv(all_anchors.unsqueeze(0).expand(N, T, 4).reshape(-1, 4),
                                 gt_of_anchor.reshape(-1, 4)).view(N, T, 4)
    targets = torch.where(fg.unsqueeze(2), targets, targets.new_zeros(()))
    inside_w = fg.unsqueeze(2).expand(N, T, 4).float()
    num_examples = (labels >= 0).sum(dim=1, keepdim=True).clamp(min=1).float()     # (N, 1)
    outside_w = ((labels >= 0).float() / num_examples).unsqueeze(2).expand(N, T, 4)

    return {'labels': labels, 'targets': targets, 'inside_w': inside_w,
            'outside_w': outside_w, 'level_shapes': level_shapes}


def _to_head_layout(x, H, W, A):
    """(N, H * W * A, 4) in anchor order -> (N, 4A, H, W), channel 4 * a + k (rpn_bbox_pred)."""
    N = x.shape[0]
    return x.reshape(N, H, W, A * 4).permute(0, 3, 1, 2).contiguous()
