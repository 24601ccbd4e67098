"""RPN proposals on the model's device, batched over images (Detectron's ``ops/generate_proposals.py``
and the collect step of ``ops/collect_and_distribute_fpn_rpn_proposals.py``).

Shapes: N images, A anchors per cell, (H, W) the feature map, K = H * W * A candidates per image,
R proposals in all. ``rois`` are (R, 5) = (image index, x1, y1, x2, y2) in the input-blob scale,
grouped image by image, each image's proposals in decreasing objectness.

Per image and per feature map (per FPN level), as Detectron does:
1. every anchor at every cell, ordered (H, W, A) like the conv outputs;
2. the ``pre_nms_top_n`` best by objectness (all when <= 0);
3. decode the deltas (weights (1, 1, 1, 1), dw/dh clipped at ``bbox_xform_clip``), clip to the
   image (im_info height / width);
4. drop boxes narrower or shorter than ``min_size`` measured at the *original* image scale
   ((x2 - x1) / im_scale + 1, at least 1 pixel) or whose centre lies outside the image;
5. NMS at ``nms_thresh`` and keep the ``post_nms_top_n`` best (both skipped when nms_thresh <= 0).
"""
from collections import namedtuple

import torch

from pydetectron.utils.boxes import BBOX_XFORM_CLIP, bbox_transform

__all__ = ["ProposalParams", "shifted_anchors", "generate_proposals",
           "generate_multilevel_proposals", "collect_fpn_proposals", "rank_within_image",
           "group_by_image"]


class ProposalParams(namedtuple("ProposalParams",
                                ["pre_nms_top_n", "post_nms_top_n", "nms_thresh", "min_size"])):
    """One mode's proposal settings (``cfg.TRAIN.RPN_*`` or ``cfg.TEST.RPN_*``)."""

    @classmethod
    def from_cfg(cls, mode):
        from pydetectron.core.config import cfg
        c = cfg[mode]
        return cls(c.RPN_PRE_NMS_TOP_N, c.RPN_POST_NMS_TOP_N, c.RPN_NMS_THRESH, c.RPN_MIN_SIZE)


def shifted_anchors(anchors, height, width, feat_stride):
    """(H * W * A, 4) anchors of every cell, ordered (H, W, A); ``anchors`` (A, 4) is one cell's."""
    device, dtype = anchors.device, anchors.dtype
    shift_x = torch.arange(width, device=device, dtype=dtype) * feat_stride
    shift_y = torch.arange(height, device=device, dtype=dtype) * feat_stride
    shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W) each
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + anchors.view(1, -1, 4)).reshape(-1, 4)


def rank_within_image(im_inds, num_images):
    """Given (M,) image indices already sorted image by image, each element's rank in its image."""
    # (not torch.bincount: on CUDA it reads the largest index back to the host)
    counts = torch.zeros(num_images, dtype=torch.long, device=im_inds.device).scatter_add_(
        0, im_inds, torch.ones_like(im_inds))
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(im_inds.numel(), device=im_inds.device) - starts[im_inds]


def group_by_image(order_scores, im_inds):
    """Permutation sorting by decreasing score, then (stably) by image."""
    by_score = torch.argsort(order_scores, descending=True, stable=True)
    by_image = torch.argsort(im_inds[by_score], stable=True)
    return by_score[by_image]


def _level_top(cls_probs, bbox_pred, field_anchors, params):
    """One feature map's ``pre_nms_top_n`` best anchors per image (steps 1-2), flattened image by
    image: scores (N * P,), deltas (N * P, 4), anchors (N * P, 4), each image's best first."""
    n, a, h, w = cls_probs.shape
    if bbox_pred.shape != (n, 4 * a, h, w):
        raise ValueError("generate_proposals: bbox_pred %s does not match cls_probs %s (4A channels)"
                         % (tuple(bbox_pred.shape), tuple(cls_probs.shape)))
    if field_anchors.shape != (h * w * a, 4):
        raise ValueError("generate_proposals: %s anchors for a %dx%d map of %d anchors per cell"
                         % (tuple(field_anchors.shape), h, w, a))
    # Proposal geometry is float32 whatever the head ran in (bf16 under --amp), as in Detectron.
    scores = cls_probs.float().permute(0, 2, 3, 1).reshape(n, -1)  # (N, K), ordered (H, W, A)
    deltas = bbox_pred.float().permute(0, 2, 3, 1).reshape(n, -1, 4)  # (N, K, 4)
    k = scores.shape[1]
    pre = params.pre_nms_top_n
    if 0 < pre < k:
        scores, order = torch.topk(scores, pre, dim=1, sorted=True)
    else:
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    deltas = torch.gather(deltas, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    return scores.reshape(-1), deltas.reshape(-1, 4), field_anchors[order.reshape(-1)]


def _decode_clip_validate(anchors, deltas, im_info, im_inds, min_size, bbox_xform_clip):
    """Steps 3-4 for (F,) candidates of images ``im_inds``: boxes (F, 4) decoded and clipped to
    their image, and (F,) valid flags (both sides >= min_size at the original scale -- at least
    one pixel -- and the centre inside the image)."""
    boxes = bbox_transform(anchors, deltas, clip=bbox_xform_clip)
    info = im_info[im_inds]                                    # (F, 3) height, width, scale
    hw_max = (info[:, :2] - 1).flip(1).repeat(1, 2)            # (F, 4) w-1, h-1, w-1, h-1
    boxes = torch.minimum(boxes, hw_max).clamp_(min=0)
    wh = boxes[:, 2:] - boxes[:, :2] + 1                       # (F, 2)
    ctr = boxes[:, :2] + wh / 2.
    wh_orig = (boxes[:, 2:] - boxes[:, :2]) / info[:, 2:3] + 1
    valid = ((wh_orig >= max(min_size, 1)).all(dim=1)
             & (ctr < info[:, :2].flip(1)).all(dim=1))
    return boxes, valid


# Boxes per NMS call: the CUDA kernel's suppression mask takes boxes^2 / 8 bytes (128 MiB here).
_NMS_CHUNK = 32768


def _nms_by_image_chunks(boxes, scores, groups, nms_thresh, n, levels):
    """``batched_nms_mask`` over the flat candidates, a few images per call so that a large
    batch does not need a mask quadratic in all its boxes (images never suppress each other).
    ``levels``: (flat offset, candidates per image) of each map; image i's candidates of a map
    are [offset + i * p, offset + (i + 1) * p). No host synchronisation."""
    from pydetectron.ops import batched_nms_mask
    per_image = sum(p for _, p in levels)
    if per_image * n <= _NMS_CHUNK or n == 1:
        return batched_nms_mask(boxes, scores, groups, nms_thresh)
    step = max(1, _NMS_CHUNK // max(per_image, 1))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        idx = torch.cat([torch.arange(o + i0 * p, o + i1 * p, device=boxes.device)
                         for o, p in levels])
        keep.scatter_(0, idx, batched_nms_mask(boxes[idx], scores[idx], groups[idx], nms_thresh))
    return keep


def _rank_in_segments(flags, seg_start):
    """For (F,) bool ``flags`` laid out in contiguous segments (``seg_start`` (F,): the flat index
    where each element's segment begins), each element's rank among the flagged elements of its
    segment before it (meaningful where ``flags`` is True)."""
    cs = torch.cumsum(flags.to(torch.int32), 0)
    before = torch.where(seg_start > 0, cs[(seg_start - 1).clamp(min=0)], torch.zeros_like(cs))
    return cs - before - 1


def generate_multilevel_proposals(cls_probs, bbox_pred, im_info, anchors, feat_strides, params,
                                  collect_top_n=None, per_image=True,
                                  bbox_xform_clip=BBOX_XFORM_CLIP, field_anchors=None):
    """Proposals of L feature maps (L = 1: a single-scale RPN) for a batch of images, collected.

    ``cls_probs`` / ``bbox_pred`` / ``anchors`` / ``feat_strides``: one entry per map, as for
    :func:`generate_proposals`. Steps 1-5 of the module docstring run per image and map; then,
    unless ``collect_top_n`` is None, FPN's collect step keeps the ``collect_top_n`` (all when
    <= 0) most confident of each image (``per_image``, test time) or of the whole minibatch
    (training, as Detectron does).
    Returns rois (R, 5) and probabilities (R,), grouped by image, best first (without collect: the
    maps' proposals one map after the other, each grouped by image, best first).

    ``field_anchors``: optionally each map's anchors at every cell ((H * W * A, 4), the
    ``shifted_anchors`` of ``anchors``), when the caller keeps them (the RPN modules cache them).

    All images and maps are decoded together and go through one batched NMS, and every step works
    on fixed-size tensors with keep flags, so on the GPU the only host synchronisation is the
    final count of proposals.
    """
    num_maps = len(cls_probs)
    if not (len(bbox_pred) == len(anchors) == len(feat_strides) == num_maps) or num_maps == 0:
        raise ValueError("generate_multilevel_proposals: got %d cls_probs, %d bbox_pred, %d "
                         "anchors and %d feat_strides; expected the same number (>= 1) of each"
                         % (num_maps, len(bbox_pred), len(anchors), len(feat_strides)))
    n = cls_probs[0].shape[0]
    device = cls_probs[0].device
    im_info = im_info.to(device=device, dtype=torch.float32)
    if field_anchors is None:
        field_anchors = [shifted_anchors(anc.to(device, torch.float32), p.shape[2], p.shape[3], st)
                         for anc, p, st in zip(anchors, cls_probs, feat_strides)]
    scores, deltas, cand_anchors, seg_ids, seg_starts = [], [], [], [], []
    level_offsets, level_sizes = [], []
    offset = 0
    for l, (probs, pred, fa) in enumerate(zip(cls_probs, bbox_pred, field_anchors)):
        s, d, a = _level_top(probs, pred, fa.to(device, torch.float32), params)
        p = s.shape[0] // n
        level_offsets.append(offset)
        level_sizes.append(p)
        # Flat layout: map by map, each image by image, best first.
        seg = torch.arange(n, device=device).view(-1, 1).expand(n, p).reshape(-1)
        seg_ids.append(seg + l * n)
        seg_starts.append(seg * p + offset)
        scores.append(s)
        deltas.append(d)
        cand_anchors.append(a)
        offset += n * p
    scores, seg_ids, seg_starts = torch.cat(scores), torch.cat(seg_ids), torch.cat(seg_starts)
    im_inds = seg_ids % n
    boxes, valid = _decode_clip_validate(torch.cat(cand_anchors), torch.cat(deltas), im_info,
                                         im_inds, params.min_size, bbox_xform_clip)

    keep = valid
    if params.nms_thresh > 0:
        # Invalid boxes get groups of their own (beyond the last segment) so that they never
        # suppress a valid one; their flags are dropped just after.
        groups = torch.where(valid, seg_ids, seg_ids + num_maps * n)
        keep = _nms_by_image_chunks(boxes, scores, groups, params.nms_thresh, n,
                                    [(o, p) for o, p in zip(level_offsets, level_sizes)]) & valid
        if params.post_nms_top_n > 0:
            keep = keep & (_rank_in_segments(keep, seg_starts) < params.post_nms_top_n)
    if collect_top_n is None:
        idx = torch.nonzero(keep).squeeze(1)  # the one host synchronisation
    else:
        # The collect step ranks the kept boxes (dropped ones rank last) and its ranking is also
        # the output order: per image, best first (test time); in training, the minibatch's best
        # first, then grouped by image (stable: each image's boxes stay best first).
        ranked = torch.where(keep, scores, scores.new_full((), -1.))
        if per_image:
            order = group_by_image(ranked, im_inds)
        else:
            order = torch.argsort(ranked, descending=True, stable=True)
        chosen = keep[order]
        if collect_top_n > 0:
            rank = (rank_within_image(im_inds[order], n) if per_image
                    else torch.arange(order.numel(), device=device))
            chosen &= rank < collect_top_n
        idx = order[chosen]  # the one host synchronisation
        if not per_image:
            idx = idx[torch.argsort(im_inds[idx], stable=True)]
    boxes, scores, im_inds = boxes[idx], scores[idx], im_inds[idx]
    rois = torch.cat([im_inds.to(boxes.dtype).unsqueeze(1), boxes], dim=1)
    return rois, scores


def generate_proposals(cls_probs, bbox_pred, im_info, anchors, feat_stride, params,
                       bbox_xform_clip=BBOX_XFORM_CLIP):
    """Proposals of one feature map for a batch of images.

    cls_probs (N, A, H, W) objectness probabilities; bbox_pred (N, 4A, H, W) deltas (anchor a's
    four deltas at channels 4a..4a+3); im_info (N, 3) = (height, width, im_scale) of the blob;
    anchors (A, 4) of one cell (``generate_anchors``); ``params`` a ``ProposalParams``.
    Returns rois (R, 5) and their probabilities (R,), grouped by image, best first.
    """
    return generate_multilevel_proposals([cls_probs], [bbox_pred], im_info, [anchors],
                                         [feat_stride], params, bbox_xform_clip=bbox_xform_clip)


def collect_fpn_proposals(rois_per_level, probs_per_level, num_images, post_nms_top_n,
                          per_image=True):
    """Merge the proposals of all FPN levels and keep the ``post_nms_top_n`` most confident.

    At test time Detectron keeps the top N of each image (``per_image=True``; it ran one image at a
    time). In training its collect op keeps the top N of the whole minibatch (``per_image=False``)
    -- Detectron's behaviour, kept on purpose. Either way the result is grouped by image, best first.
    Returns rois (R, 5) and probabilities (R,).
    """
    rois = torch.cat(rois_per_level, dim=0)
    probs = torch.cat(probs_per_level, dim=0)
    im_inds = rois[:, 0].to(torch.int64)
    if per_image:
        order = group_by_image(probs, im_inds)
        if post_nms_top_n > 0:
            order = order[rank_within_image(im_inds[order], num_images) < post_nms_top_n]
    else:
        order = torch.argsort(probs, descending=True, stable=True)
        if post_nms_top_n > 0:
            order = order[:post_nms_top_n]
        order = order[torch.argsort(im_inds[order], stable=True)]
    return rois[order], probs[order]
