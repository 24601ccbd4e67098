"""RPN proposals on the model's device, batched over images: Detectron's ``GenerateProposals``
op (``ops/generate_proposals.py``) and the collect half of its
``CollectAndDistributeFpnRpnProposals`` op (``ops/collect_and_distribute_fpn_rpn_proposals.py``).

Shapes (shorthand used in the comments below):
    N       images of the blob; ``im_info`` (N, 3) = (height, width, im_scale) of each
    L       feature maps (FPN levels lvl_min..lvl_max, finest first; 1 for a C4 RPN)
    A       anchors per cell; (H_l, W_l) the size of map l
    K_l     = H_l * W_l * A, every anchor of map l, ordered (H, W, A) like the conv outputs
    P_l     = min(pre_nms_topN, K_l), the candidates an image keeps from map l before NMS
    Q       = sum_l P_l, the candidates of one image; F = N * Q, those of the whole batch
    R       proposals out; ``rois`` (R, 5) = (image index, x1, y1, x2, y2) in the blob's scale

Per image and per map, as Detectron's op (names: ``ProposalParams`` fields = Detectron's
RPN_PRE_NMS_TOP_N / RPN_POST_NMS_TOP_N / RPN_NMS_THRESH / RPN_MIN_SIZE, lower case):
1. every anchor at every cell (``shifted_anchors``);
2. the ``pre_nms_top_n`` best by objectness (``order = scores.argsort()[::-1][:pre_nms_topN]``;
   all when <= 0);
3. ``bbox_transform`` of the deltas (weights (1, 1, 1, 1), dw/dh clipped at
   ``bbox_xform_clip``), ``clip_tiled_boxes`` to the image (im_info height / width);
4. ``_filter_boxes``: drop boxes narrower or shorter than ``min_size`` measured at the
   *original* image scale ((x2 - x1) / im_scale + 1, at least 1 pixel) or whose centre lies
   outside the image;
5. NMS at ``nms_thresh`` and keep the ``post_nms_top_n`` best (both skipped when
   nms_thresh <= 0).
Then (FPN, ``collect_top_n``) the collect step: the ``post_nms_topN`` most confident proposals of
each image at test time, of the whole minibatch in training (Detectron's behaviour).

Here all images and maps go through these steps together, in a flat layout of the F candidates
(``_CandidateLayout``), with keep flags instead of boolean indexing: on the GPU the only host
synchronisation is the final count of proposals, and training's ``padded`` rows (a count fixed by
the shapes, the dropped candidates flagged) have none.

What is kept between calls, and why (measured on the CPU, one thread: R-50-FPN's RPN on one
coco_mini image at 800 x 1216, test settings, ~10 ms a call with both kept; on a GPU each
operator costs ~35 us of host time, BENCHMARK.md, and the proposals ~7 ms of a training step's):
  * ``_candidate_layout``: the layout's index tensors depend only on (N, K_l, pre_nms_topN,
    device), so an ``lru_cache`` keeps the last 64. Building one for five maps is 84 small
    operators: 0.25 ms on the CPU (~3% of a call), but ~3 ms of host time on a GPU.
  * ``FieldAnchors``: the anchors of every cell of every map and, computed on first use, their
    centres and sizes (the anchors' half of ``bbox_transform``). The RPN modules keep one per
    set of map sizes. Computing the centres and sizes is 7 operators over every anchor
    (~270k): 2.8 ms on the CPU (~28% of a call).
"""
import functools
from collections import namedtuple

import torch

from pydetectron.utils.boxes import BBOX_XFORM_CLIP, box_centres_sizes, decode_centres_sizes

__all__ = ["ProposalParams", "FieldAnchors", "shifted_anchors", "generate_proposals",
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


class FieldAnchors:
    """Every anchor of each of L maps (``per_map``: [(K_l, 4)] float32 on one device, each
    ordered (H, W, A), the ``shifted_anchors`` of the map's cell anchors) and, computed once on
    first use, their centres and sizes (``centres_sizes``). The tensors must not be changed
    in place once the centres and sizes are read: the RPN modules build them from their anchor
    buffers and keep them per set of map sizes."""

    def __init__(self, per_map):
        self.per_map = list(per_map)
        self._centres_sizes = None

    def centres_sizes(self):
        """(sum_l K_l, 4) = (centre x, centre y, width, height) of every anchor, map after map
        (``utils.boxes.box_centres_sizes``: the anchors' part of ``bbox_transform``)."""
        if self._centres_sizes is None:
            self._centres_sizes = _centres_sizes(self.per_map)
        return self._centres_sizes


def _centres_sizes(field_anchors):
    anchors = torch.cat([a.to(torch.float32) for a in field_anchors])
    return torch.cat(box_centres_sizes(anchors), dim=1)


class _CandidateLayout:
    """The flat layout of the F candidates of a batch: map by map, each map image by image, each
    image's P_l best (``pre_nms_topN``) first. A segment is (map l, image i): its P_l candidates
    are contiguous. Built on the device itself (a copy from the host would synchronise a GPU).

    Per flat candidate, (F,) each:
      ``topk_position``     its position in the maps' (N, P_l) top-k results concatenated along
                            dim 1 (image-major; multi-map only)
      ``map_first_column``  its map's first column in the (N, sum_l K_l) scores of all maps
      ``im_inds``           its image (``im_inds_col`` (F, 1), ``roi_batch_inds`` (F, 1)
                            float32: the first column of ``rois``)
      ``segment``           l * N + i; ``segment_for_invalid``: past the last segment, so that
                            invalid boxes are NMS groups of their own
      ``segment_start``     the flat index where its segment begins
    """

    def __init__(self, num_images, anchors_per_map, pre_nms_top_n, device):
        N = self.num_images = num_images
        self.device = device
        self.anchors_per_map = list(anchors_per_map)                         # K_l
        self.pre_nms_counts = [pre_nms_top_n if 0 < pre_nms_top_n < k else k  # P_l
                               for k in anchors_per_map]
        self.candidates_per_image = sum(self.pre_nms_counts)                   # Q
        self.map_offsets = []  # (flat offset, P_l) of each map, for _nms_by_image_chunks
        topk_position, map_first_column, im_inds, segment, segment_start = [], [], [], [], []
        column = q_column = offset = 0
        for l, (k, p) in enumerate(zip(self.anchors_per_map, self.pre_nms_counts)):
            self.map_offsets.append((offset, p))
            i = torch.arange(N, device=device).view(-1, 1).expand(N, p).reshape(-1)
            topk_position.append(i * self.candidates_per_image + q_column
                                 + torch.arange(p, device=device).repeat(N))
            map_first_column.append(torch.full((N * p,), column, dtype=torch.long,
                                               device=device))
            im_inds.append(i)
            segment.append(i + l * N)
            segment_start.append(i * p + offset)
            column += k
            q_column += p
            offset += N * p
        (self.topk_position, self.map_first_column, self.im_inds, self.segment,
         self.segment_start) = (torch.cat(x) for x in (topk_position, map_first_column, im_inds,
                                                       segment, segment_start))
        self.segment_for_invalid = self.segment + len(self.anchors_per_map) * N
        self.im_inds_col = self.im_inds.view(-1, 1)
        self.roi_batch_inds = self.im_inds_col.to(torch.float32)
        # im_info (height, width, scale) -> (w - 1, h - 1, w - 1, h - 1, w, h, scale): the clip
        # bounds of (x1, y1, x2, y2), the image size for the centre test, the scale.
        j = torch.arange(7, device=device)
        self.im_info_cols = (1 - j % 2).index_fill_(0, j[6:], 2).view(1, 7)
        self.im_info_minus = (j < 4).to(torch.float32).view(1, 7)
        self.dropped_score = torch.full((), -1., device=device)  # ranks after every kept box
        self.no_flag = torch.zeros(1, dtype=torch.bool, device=device)
        self._first_of_each_image = {}

    def first_of_each_image(self, top_n):
        """Positions, in an order grouped by image (each image's Q candidates together), of each
        image's ``top_n`` first (kept per ``top_n``: the collect step asks for one or two)."""
        sel = self._first_of_each_image.get(top_n)
        if sel is None:
            Q = self.candidates_per_image
            sel = (torch.arange(self.num_images, device=self.device).view(-1, 1) * Q
                   + torch.arange(min(top_n, Q), device=self.device)).view(-1)
            self._first_of_each_image[top_n] = sel
        return sel


@functools.lru_cache(maxsize=64)
def _candidate_layout(num_images, anchors_per_map, pre_nms_top_n, device):
    """The ``_CandidateLayout`` of these sizes (``anchors_per_map`` a tuple, ``device`` a
    string); see the module docstring for why it is kept."""
    return _CandidateLayout(num_images, anchors_per_map, pre_nms_top_n, device)


def _decode_clip_filter(anchor_centres_sizes, deltas, im_info, layout, min_size,
                        bbox_xform_clip):
    """Steps 3-4 for the (F,) flat candidates: ``proposals`` (F, 4) decoded (``bbox_transform``'s
    arithmetic, ``utils.boxes.decode_centres_sizes``; weights (1, 1, 1, 1)) and clipped to their
    image, and (F,) ``keep`` flags (both sides >= min_size at the original scale -- at least one
    pixel -- and the centre inside the image). ``anchor_centres_sizes`` (F, 4): the candidates'
    anchors (``FieldAnchors.centres_sizes``)."""
    ctr, wh = anchor_centres_sizes.split(2, 1)
    dxy, dwh = deltas.split(2, 1)
    proposals = decode_centres_sizes(ctr, wh, dxy, dwh, bbox_xform_clip, dim=1)
    info = im_info[layout.im_inds_col, layout.im_info_cols] - layout.im_info_minus   # (F, 7)
    xy_max, im_size, im_scale = info.split([4, 2, 1], 1)
    proposals = torch.minimum(proposals, xy_max).clamp_(min=0)
    lo, hi = proposals.split(2, 1)
    d = hi - lo
    ctr = lo + (d + 1) / 2.
    wh_orig = d / im_scale + 1
    keep = ((wh_orig >= max(min_size, 1)) & (ctr < im_size)).all(dim=1)
    return proposals, keep


# Boxes per NMS call: the CUDA kernel's suppression mask takes boxes^2 / 8 bytes (128 MiB here).
_NMS_CHUNK = 32768


def _nms_by_image_chunks(proposals, scores, groups, nms_thresh, num_images, map_offsets):
    """``batched_nms_mask`` over the flat candidates, a few images per call so that a large
    batch does not need a mask quadratic in all its boxes (images never suppress each other).
    ``map_offsets``: (flat offset, P_l) of each map; image i's candidates of map l are
    [offset + i * P_l, offset + (i + 1) * P_l). No host synchronisation."""
    from pydetectron.ops import batched_nms_mask
    Q = sum(p for _, p in map_offsets)
    if Q * num_images <= _NMS_CHUNK or num_images == 1:
        return batched_nms_mask(proposals, scores, groups, nms_thresh)
    step = max(1, _NMS_CHUNK // max(Q, 1))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for i0 in range(0, num_images, step):
        i1 = min(num_images, i0 + step)
        idx = torch.cat([torch.arange(o + i0 * p, o + i1 * p, device=proposals.device)
                         for o, p in map_offsets])
        keep.scatter_(0, idx, batched_nms_mask(proposals[idx], scores[idx], groups[idx],
                                               nms_thresh))
    return keep


def _rank_in_segments(flags, segment_start, no_flag):
    """For (F,) bool ``flags`` laid out in contiguous segments (``segment_start`` (F,): the flat
    index where each element's segment begins), the number of flagged elements of its segment
    before each element. ``no_flag``: a (1,) False."""
    before = torch.cumsum(torch.cat([no_flag, flags]), 0, dtype=torch.int32)  # (F + 1,)
    return before[:-1] - before[segment_start]


@torch.no_grad()
def generate_multilevel_proposals(cls_probs, bbox_pred, im_info, anchors, feat_strides, params,
                                  collect_top_n=None, per_image=True,
                                  bbox_xform_clip=BBOX_XFORM_CLIP, field_anchors=None,
                                  padded=False):
    """Proposals of L feature maps (L = 1: a single-scale RPN) for a batch of images, collected.

    ``cls_probs`` (N, A, H_l, W_l) / ``bbox_pred`` (N, 4A, H_l, W_l) / ``anchors`` (A, 4) of
    one cell / ``feat_strides``: one entry per map, as for :func:`generate_proposals`. Steps 1-5
    of the module docstring run per image and map; then, unless ``collect_top_n`` (Detectron's
    collect ``post_nms_topN``) is None, the collect step keeps the ``collect_top_n`` (all when
    <= 0) most confident of each image (``per_image``, test time) or of the whole minibatch
    (training, as Detectron does).
    Returns rois (R, 5) and probabilities (R,), grouped by image, best first (without collect: the
    maps' proposals one map after the other, each grouped by image, best first). They carry no
    gradient (Detectron's proposals are constants to the losses).

    ``field_anchors``: each map's anchors at every cell, when the caller keeps them -- a
    ``FieldAnchors`` (its centres and sizes are then computed once) or a list of (K_l, 4)
    tensors; default: built from ``anchors`` and ``feat_strides``.

    ``padded`` (training, ``per_image=False`` or no collect step): no host synchronisation at
    all. The rows come in a number fixed by the shapes and settings alone -- every proposal the
    settings could keep -- and a third output, ``valid`` (R_max,) bool, flags the proposals:
    the valid rows come first, exactly the rows (and order) of the unpadded call, the others
    are dropped candidates the caller must ignore.
    """
    num_maps = len(cls_probs)
    if not (len(bbox_pred) == len(anchors) == len(feat_strides) == num_maps) or num_maps == 0:
        raise ValueError("generate_multilevel_proposals: got %d cls_probs, %d bbox_pred, %d "
                         "anchors and %d feat_strides; expected the same number (>= 1) of each"
                         % (num_maps, len(bbox_pred), len(anchors), len(feat_strides)))
    per_map_anchors = field_anchors.per_map if isinstance(field_anchors, FieldAnchors) \
        else field_anchors
    if per_map_anchors is not None and len(per_map_anchors) != num_maps:
        raise ValueError("generate_multilevel_proposals: got %d field_anchors for %d maps"
                         % (len(per_map_anchors), num_maps))
    N = cls_probs[0].shape[0]
    shapes = []  # (A, H_l, W_l) per map
    for probs, pred in zip(cls_probs, bbox_pred):
        if probs.dim() != 4 or probs.shape[0] != N:
            raise ValueError("generate_proposals: cls_probs %s: expected (N, A, H, W) with N = %d "
                             "like the first map's" % (tuple(probs.shape), N))
        _, a, h, w = probs.shape
        if pred.shape != (N, 4 * a, h, w):
            raise ValueError("generate_proposals: bbox_pred %s does not match cls_probs %s (4A "
                             "channels)" % (tuple(pred.shape), tuple(probs.shape)))
        shapes.append((a, h, w))
    if per_map_anchors is not None:
        for fa, (a, h, w) in zip(per_map_anchors, shapes):
            if fa.shape != (h * w * a, 4):
                raise ValueError("generate_proposals: %s anchors for a %dx%d map of %d anchors "
                                 "per cell" % (tuple(fa.shape), h, w, a))
    device = cls_probs[0].device
    im_info = im_info.to(device=device, dtype=torch.float32)
    if isinstance(field_anchors, FieldAnchors):
        anchor_centres_sizes = field_anchors.centres_sizes().to(device)
    else:
        if per_map_anchors is None:  # step 1
            per_map_anchors = [shifted_anchors(anc.to(device, torch.float32), h, w, stride)
                               for anc, (a, h, w), stride in zip(anchors, shapes, feat_strides)]
        anchor_centres_sizes = _centres_sizes([fa.to(device) for fa in per_map_anchors])
    layout = _candidate_layout(N, tuple(a * h * w for a, h, w in shapes), params.pre_nms_top_n,
                               str(device))

    # Step 2. Proposal geometry is float32 whatever the head ran in (bf16 under --amp), as in
    # Detectron. Scores of all maps (N, sum_l K_l), each map's anchors ordered (H, W, A).
    A = shapes[0][0]
    same_A = all(s[0] == A for s in shapes)
    if same_A:  # the maps concatenated along H * W: (N, A, sum H_l W_l) -> (N, sum H_l W_l, A)
        scores_all_maps = torch.cat([p.flatten(2) for p in cls_probs], 2) if num_maps > 1 \
            else cls_probs[0].flatten(2)
        scores_all_maps = scores_all_maps.float().transpose(1, 2).contiguous().view(N, -1)
        # (N, A, 4, sum H_l W_l), read at (image, a, :, cell) below rather than transposed
        deltas_all_maps = torch.cat([d.reshape(N, A, 4, -1) for d in bbox_pred], 3)
    else:
        scores_all_maps = torch.cat([p.float().permute(0, 2, 3, 1).reshape(N, -1)
                                     for p in cls_probs], 1)
        deltas_all_maps = torch.cat([d.permute(0, 2, 3, 1).reshape(N, -1, 4)
                                     for d in bbox_pred], 1)
    # Detectron: order = scores.argsort()[::-1][:pre_nms_topN], per image and map: (N, P_l)
    order_per_map = []
    scores_per_map = scores_all_maps.split(layout.anchors_per_map, 1) if num_maps > 1 \
        else [scores_all_maps]
    for scores_l, k, p in zip(scores_per_map, layout.anchors_per_map, layout.pre_nms_counts):
        if p < k:
            order_per_map.append(torch.topk(scores_l, p, dim=1, sorted=True)[1])
        else:
            order_per_map.append(torch.sort(scores_l, dim=1, descending=True, stable=True)[1])
    if num_maps > 1:  # (F,) each flat candidate's column in scores_all_maps
        order = torch.take(torch.cat(order_per_map, 1), layout.topk_position) \
            + layout.map_first_column
    else:
        order = order_per_map[0].view(-1)
    scores = scores_all_maps[layout.im_inds, order]                          # (F,)
    if same_A:  # column = cell * A + a
        deltas = deltas_all_maps[layout.im_inds, order % A, :, order // A]     # (F, 4)
    else:
        deltas = deltas_all_maps[layout.im_inds, order]
    # Steps 3-4.
    proposals, keep = _decode_clip_filter(anchor_centres_sizes[order], deltas.float(), im_info,
                                          layout, params.min_size, bbox_xform_clip)

    # Step 5.
    if params.nms_thresh > 0:
        # Invalid boxes get groups of their own (beyond the last segment) so that they never
        # suppress a valid one; their flags are dropped just after.
        groups = torch.where(keep, layout.segment, layout.segment_for_invalid)
        keep = _nms_by_image_chunks(proposals, scores, groups, params.nms_thresh, N,
                                    layout.map_offsets) & keep
        # (a segment holds at most max(P_l) candidates: no cut needed beyond)
        if 0 < params.post_nms_top_n < max(layout.pre_nms_counts):
            keep = keep & (_rank_in_segments(keep, layout.segment_start, layout.no_flag)
                           < params.post_nms_top_n)
    if collect_top_n is None:
        if padded:
            # the kept candidates first, in their flat order (grouped by image, each map's best
            # first); with NMS an image keeps at most post_nms_top_n of each map (without it,
            # nothing bounds an image's proposals below its candidates)
            order = torch.argsort((~keep).to(torch.uint8), stable=True)
            bound = params.post_nms_top_n if params.nms_thresh > 0 else 0
            limit = len(layout.pre_nms_counts) * N * bound
            if 0 < limit < order.shape[0]:
                order = order[:limit]
        else:
            order = torch.nonzero(keep).squeeze(1)  # the one host synchronisation
    else:
        # The collect step ranks the kept boxes (dropped ones rank last) and its ranking is also
        # the output order: per image, best first (test time); in training, the minibatch's best
        # first, then grouped by image (stable: each image's boxes stay best first).
        if padded and per_image and N > 1:
            raise ValueError("generate_multilevel_proposals: padded needs per_image=False (the "
                             "training collect step) or no collect step")
        collect_scores = torch.where(keep, scores, layout.dropped_score)
        if per_image and N > 1:
            # grouped by image, each image's Q candidates (kept or not) together
            collect_order = group_by_image(collect_scores, layout.im_inds)
            if 0 < collect_top_n < layout.candidates_per_image:
                collect_order = collect_order[layout.first_of_each_image(collect_top_n)]
        else:  # (one image: the same as per image)
            collect_order = torch.argsort(collect_scores, descending=True, stable=True)
            if 0 < collect_top_n < collect_order.shape[0]:
                collect_order = collect_order[:collect_top_n]
        if padded:
            order = collect_order
            if N > 1:  # grouped by image (stable: best first), the dropped ones last
                im = torch.where(keep[order], layout.im_inds[order], N)
                order = order[torch.argsort(im, stable=True)]
        else:
            order = collect_order[keep[collect_order]]  # the one host synchronisation
            if not per_image and N > 1:
                order = order[torch.argsort(layout.im_inds[order], stable=True)]
    rois = torch.cat([layout.roi_batch_inds, proposals], dim=1)[order]
    if padded:   # a number of rows fixed by the shapes: the kept ones first, then the dropped
        return rois, scores[order], keep[order]
    return rois, scores[order]


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
