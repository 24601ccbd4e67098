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
import weakref
from collections import namedtuple

import torch

from pydetectron.utils.boxes import BBOX_XFORM_CLIP, box_centres_sizes, decode_centres_sizes

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


# Index tensors that depend only on shapes (see _Layout) and the anchors' decoding statistics (see
# _anchor_stats) are kept between calls, bounded like rpn_heads' anchor cache: each call then
# issues a few dozen operators whatever the number of maps (the host's cost per operator is
# what limits small-batch steps on a fast GPU).
_LAYOUT_CACHE, _LAYOUT_CACHE_SIZE = {}, 64
_ANCHOR_CACHE, _ANCHOR_CACHE_SIZE = {}, 32  # (each entry as large as all the field anchors)


class _Layout:
    """The flat candidate layout for N images and maps of (K_l,) candidates per image: map by
    map, each map image by image, each image's ``P_l`` best (``pre_nms_top_n``) first; F = N * Q
    candidates, Q = sum(P_l). Segment (l, i): map l's candidates of image i.

    ``ks`` / ``ps``: (K_l,) / (P_l,). ``perm`` (F,): each flat candidate's position in the maps'
    (N, P_l) top-k results concatenated along dim 1 (image-major); ``k_off`` (F,): its map's first
    column in the (N, sum(K_l)) scores of all maps; ``im`` (F,) its image (``im_col`` (F, 1),
    ``im_f`` (F, 1) float32), ``seg`` its segment l * N + i, ``seg_start`` the flat index where
    its segment begins.
    """

    def __init__(self, n, ks, pre, device):
        # Built on the device itself (no copy from the host: on CUDA that would synchronise).
        self.n, self.device = n, device
        self.ks = list(ks)
        self.ps = [pre if 0 < pre < k else k for k in ks]
        self.q = sum(self.ps)
        self.levels = []  # (flat offset, P_l) of each map, for _nms_by_image_chunks
        perm, k_off, im, seg, seg_start = [], [], [], [], []
        col = q_col = offset = 0
        for l, (k, p) in enumerate(zip(ks, self.ps)):
            self.levels.append((offset, p))
            i = torch.arange(n, device=device).view(-1, 1).expand(n, p).reshape(-1)
            perm.append(i * self.q + q_col + torch.arange(p, device=device).repeat(n))
            k_off.append(torch.full((n * p,), col, dtype=torch.long, device=device))
            im.append(i)
            seg.append(i + l * n)
            seg_start.append(i * p + offset)
            col += k
            q_col += p
            offset += n * p
        self.perm, self.k_off, self.im, self.seg, self.seg_start = (
            torch.cat(x) for x in (perm, k_off, im, seg, seg_start))
        self.seg_invalid = self.seg + len(ks) * n  # groups of their own for invalid boxes
        self.im_col = self.im.view(-1, 1)
        self.im_f = self.im_col.to(torch.float32)
        # im_info (height, width, scale) -> (w - 1, h - 1, w - 1, h - 1, w, h, scale)
        j = torch.arange(7, device=device)
        self.info_cols = (1 - j % 2).index_fill_(0, j[6:], 2).view(1, 7)
        self.info_sub = (j < 4).to(torch.float32).view(1, 7)
        self.minus_one = torch.full((), -1., device=device)
        self.no_flag = torch.zeros(1, dtype=torch.bool, device=device)
        self._image_top = {}

    def image_top(self, top_n):
        """Positions, in an order grouped by image (each image's Q candidates together), of each
        image's ``top_n`` first."""
        sel = self._image_top.get(top_n)
        if sel is None:
            sel = (torch.arange(self.n, device=self.device).view(-1, 1) * self.q
                   + torch.arange(min(top_n, self.q), device=self.device)).view(-1)
            self._image_top[top_n] = sel
        return sel


def _layout(n, ks, pre, device):
    key = (n, tuple(ks), pre, str(device))
    hit = _LAYOUT_CACHE.get(key)
    if hit is None:
        if len(_LAYOUT_CACHE) >= _LAYOUT_CACHE_SIZE:
            _LAYOUT_CACHE.clear()
        hit = _LAYOUT_CACHE[key] = _Layout(n, ks, pre, device)
    return hit


def _anchor_stats(shapes, anchors, feat_strides, field_anchors, device):
    """(sum(K_l), 4) = (centre x, centre y, width, height) of every anchor of every map, maps one
    after the other, each ordered (H, W, A): the anchor's part of the decoding
    (``utils.boxes.box_centres_sizes``). ``shapes``: (A, H, W) of each map.

    Kept per source tensors (the callers' field anchors, or cell anchors and map sizes), by
    identity and version: the RPN modules hand the same cached field anchors every step. The
    entry holds weak references to the sources, so a reused id is not mistaken for them.
    """
    if field_anchors is not None:
        for fa, (a, h, w) in zip(field_anchors, shapes):
            if fa.shape != (h * w * a, 4):
                raise ValueError("generate_proposals: %s anchors for a %dx%d map of %d anchors "
                                 "per cell" % (tuple(fa.shape), h, w, a))
        src = list(field_anchors)
        key = ("field", tuple(id(t) for t in src), str(device))
    else:
        src = list(anchors)
        key = ("cell", tuple(id(t) for t in src), tuple(shapes),
               tuple(float(s) for s in feat_strides), str(device))
    # (inference tensors have no version counter: not cached)
    cacheable = not any(t.is_inference() for t in src)
    versions = tuple(t._version for t in src) if cacheable else None
    hit = _ANCHOR_CACHE.get(key) if cacheable else None
    if hit is not None and hit[1] == versions and all(r() is t for r, t in zip(hit[0], src)):
        return hit[2]
    if field_anchors is None:
        field_anchors = [shifted_anchors(anc.to(device, torch.float32), h, w, st)
                         for anc, (a, h, w), st in zip(anchors, shapes, feat_strides)]
    fa = torch.cat([f.to(device, torch.float32) for f in field_anchors])
    stats = torch.cat(box_centres_sizes(fa), dim=1)
    if cacheable:
        if len(_ANCHOR_CACHE) >= _ANCHOR_CACHE_SIZE:
            _ANCHOR_CACHE.clear()
        _ANCHOR_CACHE[key] = ([weakref.ref(t) for t in src], versions, stats)
    return stats


def _decode_clip_validate(stats, deltas, im_info, lay, min_size, bbox_xform_clip):
    """Steps 3-4 for the (F,) flat candidates: boxes (F, 4) decoded (``bbox_transform``'s
    arithmetic, ``utils.boxes.decode_centres_sizes``; weights (1, 1, 1, 1)) and clipped to
    their image, and (F,) valid flags (both sides >= min_size at the original scale -- at least
    one pixel -- and the centre inside the image). ``stats`` (F, 4): the anchors' centres and
    sizes (``_anchor_stats``)."""
    ctr, wh = stats.split(2, 1)
    dxy, dwh = deltas.split(2, 1)
    boxes = decode_centres_sizes(ctr, wh, dxy, dwh, bbox_xform_clip, dim=1)
    info = im_info[lay.im_col, lay.info_cols] - lay.info_sub  # (F, 7), see _Layout
    xy_max, size, scale = info.split([4, 2, 1], 1)
    boxes = torch.minimum(boxes, xy_max).clamp_(min=0)
    lo, hi = boxes.split(2, 1)
    d = hi - lo
    ctr = lo + (d + 1) / 2.
    wh_orig = d / scale + 1
    valid = ((wh_orig >= max(min_size, 1)) & (ctr < size)).all(dim=1)
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


def _rank_in_segments(flags, seg_start, no_flag):
    """For (F,) bool ``flags`` laid out in contiguous segments (``seg_start`` (F,): the flat index
    where each element's segment begins), the number of flagged elements of its segment before
    each element. ``no_flag``: a (1,) False."""
    before = torch.cumsum(torch.cat([no_flag, flags]), 0, dtype=torch.int32)  # (F + 1,)
    return before[:-1] - before[seg_start]


@torch.no_grad()
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
    maps' proposals one map after the other, each grouped by image, best first). They carry no
    gradient (Detectron's proposals are constants to the losses).

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
    if field_anchors is not None and len(field_anchors) != num_maps:
        raise ValueError("generate_multilevel_proposals: got %d field_anchors for %d maps"
                         % (len(field_anchors), num_maps))
    n = cls_probs[0].shape[0]
    shapes = []
    for probs, pred in zip(cls_probs, bbox_pred):
        if probs.dim() != 4 or probs.shape[0] != n:
            raise ValueError("generate_proposals: cls_probs %s: expected (N, A, H, W) with N = %d "
                             "like the first map's" % (tuple(probs.shape), n))
        _, a, h, w = probs.shape
        if pred.shape != (n, 4 * a, h, w):
            raise ValueError("generate_proposals: bbox_pred %s does not match cls_probs %s (4A "
                             "channels)" % (tuple(pred.shape), tuple(probs.shape)))
        shapes.append((a, h, w))
    device = cls_probs[0].device
    im_info = im_info.to(device=device, dtype=torch.float32)
    stats_all = _anchor_stats(shapes, anchors, feat_strides, field_anchors, device)
    lay = _layout(n, [a * h * w for a, h, w in shapes], params.pre_nms_top_n, device)

    # Steps 1-2. Proposal geometry is float32 whatever the head ran in (bf16 under --amp), as in
    # Detectron. Scores of all maps (N, sum(K_l)), each map's candidates ordered (H, W, A).
    a = shapes[0][0]
    same_a = all(s[0] == a for s in shapes)
    if same_a:  # the maps concatenated along H * W: (N, A, S) -> (N, S, A)
        scores_all = torch.cat([p.flatten(2) for p in cls_probs], 2) if num_maps > 1 \
            else cls_probs[0].flatten(2)
        scores_all = scores_all.float().transpose(1, 2).contiguous().view(n, -1)
        # (N, A, 4, S), read at (image, a, :, s) below rather than transposed
        deltas_all = torch.cat([d.reshape(n, a, 4, -1) for d in bbox_pred], 3)
    else:
        scores_all = torch.cat([p.float().permute(0, 2, 3, 1).reshape(n, -1) for p in cls_probs],
                               1)
        deltas_all = torch.cat([d.permute(0, 2, 3, 1).reshape(n, -1, 4) for d in bbox_pred], 1)
    top = []
    per_map = scores_all.split(lay.ks, 1) if num_maps > 1 else [scores_all]
    for s, k, p in zip(per_map, lay.ks, lay.ps):
        if p < k:
            top.append(torch.topk(s, p, dim=1, sorted=True)[1])
        else:
            top.append(torch.sort(s, dim=1, descending=True, stable=True)[1])
    if num_maps > 1:  # (F,) columns in scores_all of the flat candidates
        cols = torch.take(torch.cat(top, 1), lay.perm) + lay.k_off
    else:
        cols = top[0].view(-1)
    scores = scores_all[lay.im, cols]
    if same_a:
        deltas = deltas_all[lay.im, cols % a, :, cols // a]
    else:
        deltas = deltas_all[lay.im, cols]
    boxes, valid = _decode_clip_validate(stats_all[cols], deltas.float(), im_info, lay,
                                         params.min_size, bbox_xform_clip)

    keep = valid
    if params.nms_thresh > 0:
        # Invalid boxes get groups of their own (beyond the last segment) so that they never
        # suppress a valid one; their flags are dropped just after.
        groups = torch.where(valid, lay.seg, lay.seg_invalid)
        keep = _nms_by_image_chunks(boxes, scores, groups, params.nms_thresh, n,
                                    lay.levels) & valid
        # (a segment holds at most max(P_l) candidates: no cut needed beyond)
        if 0 < params.post_nms_top_n < max(lay.ps):
            keep = keep & (_rank_in_segments(keep, lay.seg_start, lay.no_flag)
                           < params.post_nms_top_n)
    if collect_top_n is None:
        idx = torch.nonzero(keep).squeeze(1)  # the one host synchronisation
    else:
        # The collect step ranks the kept boxes (dropped ones rank last) and its ranking is also
        # the output order: per image, best first (test time); in training, the minibatch's best
        # first, then grouped by image (stable: each image's boxes stay best first).
        ranked = torch.where(keep, scores, lay.minus_one)
        if per_image and n > 1:
            # grouped by image, each image's Q candidates (kept or not) together
            order = group_by_image(ranked, lay.im)
            if 0 < collect_top_n < lay.q:
                order = order[lay.image_top(collect_top_n)]
        else:  # (one image: the same as per image)
            order = torch.argsort(ranked, descending=True, stable=True)
            if 0 < collect_top_n < order.shape[0]:
                order = order[:collect_top_n]
        idx = order[keep[order]]  # the one host synchronisation
        if not per_image and n > 1:
            idx = idx[torch.argsort(lay.im[idx], stable=True)]
    rois = torch.cat([lay.im_f, boxes], dim=1)[idx]
    return rois, scores[idx]


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
