"""Mask R-CNN training targets (Detectron's ``roi_data/mask_rcnn.py``) on the device.

Each foreground RoI of the Fast R-CNN sample gets the polygons of one non-crowd ground-truth
object, the one whose polygons' tight box (``segms.polys_to_boxes``) overlaps the RoI most (IoU
with ``+1`` widths, in the original image scale, ties to the first object), rasterized inside the
RoI onto an M x M grid (M = ``MRCNN.RESOLUTION``) in Detectron's frame
(``polys_to_mask_wrt_box``): x -> (x - x1) * M / max(x2 - x1, 1) -- no ``+1`` here -- likewise
for y, each polygon by pycocotools' scan conversion (pixel-exact), the object's polygons OR-ed.
All of it at the original image scale, as Detectron: the roidb's polygons (the loader's
``segms_orig``, as float32) and the RoIs' original-scale boxes (``sampled_boxes``), so the
clamp max(x2 - x1, 1) holds RoIs thinner than one *original* pixel (a RoI 0.6 px wide in the
image is 1.2 px wide in a blob of scale 2: clamping there would stretch the polygons by 1 / 0.6
instead of 1). Without ``segms_orig`` (a hand-built roidb) the frame is the blob's.
With the compiled extension that is one op, ``ops.polygon_masks_in_boxes`` (one kernel, no host
synchronisation); without it, the pure-torch ``targets.rasterize`` path, which is also the
reference the op is tested against bit for bit. An image without foreground RoIs contributes its
first RoI with an all -1 ("ignore") target and class 0, as Detectron does so that the blob is
never empty.

Shapes: N images, G gt rows per image (padded), S sampled RoIs, F foreground RoIs,
R_m = mask RoIs (F plus one per image without foreground), P polygons, V polygon vertices.

Outputs (a dict, Detectron's blob names):
    mask_rois           (R_m, 5) float32, blob scale
    roi_has_mask_int32  (S,) int32, 1 for the sampled RoIs that are mask RoIs
    masks_int32         (R_m, M, M) int32 in {0, 1}, -1 for ignored RoIs: the target of the
                        RoI's own class (Detectron's class-specific ``masks_int32`` is this
                        expanded to (R_m, K * M * M) with -1 elsewhere, see
                        ``expand_to_class_specific_mask_targets``; ``losses.mask_rcnn_losses``
                        takes either and gives the same loss)
    mask_labels_int32   (R_m,) int32, the class of each mask RoI (0 for the ignored ones)
"""
from collections import namedtuple

import numpy as np
import torch

from pydetectron import ops as _ops
from pydetectron.modeling.targets.gt import GtBatch, gt_rows, pack_gt, to_device_async
from pydetectron.modeling.targets.overlaps import box_iou
from pydetectron.modeling.targets.rasterize import rasterize_polygons
from pydetectron.ops import polygon_mask as _polygon_mask

# All polygons of a batch, packed (gt objects in batch-wide order n * G + j):
PolygonBatch = namedtuple('PolygonBatch', [
    'xy',          # (V, 2) float32 vertices in blob scale
    'starts',      # (P,) int64 first vertex of each polygon
    'lengths',     # (P,) int64 vertex count of each polygon
    'gt_index',    # (P,) int64 batch-wide gt index n * G + j of the polygon's object
    'obj_first',   # (N * G,) int64 first polygon of each batch-wide gt object
    'obj_count',   # (N * G,) int64 its polygon count (0 for crowd regions and padding)
    'original_scale',  # bool: xy at the original image scale (``segms_orig``), else blob scale
])
PolygonBatch.__new__.__defaults__ = (False,)


def pack_polygons(roidb, G, device):
    """Pack the polygons of every image's gt objects into a ``PolygonBatch`` on ``device``.

    ``roidb[n]['segms_orig']`` (original scale; used when every image has it) or
    ``roidb[n]['segms']`` (blob scale) lists the segms of image n's gt rows: polygons (flat
    [x0, y0, ...] lists or arrays) or an RLE dict for crowd regions (skipped: Detectron's mask
    targets use non-crowd polygons only). ``G`` is the padded gt count (``GtBatch``).
    Objects are packed in increasing batch-wide gt index n * G + j, each object's polygons
    contiguous, so an object's polygons are ``obj_first[i] .. obj_first[i] + obj_count[i] - 1``.
    """
    coords, lengths, owners = [], [], []
    original_scale = all(entry.get('segms_orig') is not None for entry in roidb)
    key = 'segms_orig' if original_scale else 'segms'
    for n, entry in enumerate(roidb):
        segms = entry.get(key)
        if segms is None:
            raise KeyError("roidb[%d] has no 'segms' field (needed for the mask targets)" % n)
        G_n = gt_rows(entry, n).numel()
        if len(segms) != G_n:
            raise ValueError("roidb[%d]['%s'] has %d items but the image has %d ground-truth "
                             "rows" % (n, key, len(segms), G_n))
        if G_n > G:
            raise ValueError("roidb[%d] has %d ground-truth rows but the padded gt count G is %d"
                             % (n, G_n, G))
        for j, segm in enumerate(segms):
            if isinstance(segm, dict):   # crowd RLE
                continue
            for poly in segm:
                p = np.asarray(poly, dtype=np.float32).reshape(-1)
                if p.size < 2 or p.size % 2:
                    raise ValueError('roidb[%d] object %d: a polygon must hold an even number '
                                     '(>= 2) of coordinates, got %d' % (n, j, p.size))
                coords.append(p)
                lengths.append(p.size // 2)
                owners.append(n * G + j)
    xy = torch.from_numpy(np.concatenate(coords).reshape(-1, 2)) if coords \
        else torch.zeros((0, 2), dtype=torch.float32)
    # The index tables on the host (owners increase, so each object's polygons are a run).
    P, NG = len(lengths), len(roidb) * G
    lengths = np.asarray(lengths, dtype=np.int64)
    owners = np.asarray(owners, dtype=np.int64)
    obj_count = np.bincount(owners, minlength=NG).astype(np.int64)
    meta = np.concatenate([np.cumsum(lengths) - lengths, lengths, owners,
                           np.cumsum(obj_count) - obj_count, obj_count])
    # Two asynchronous host -> device copies in all: the vertices, and the index tables together.
    meta = to_device_async(torch.from_numpy(meta), device)
    starts, lengths, owners, obj_first, obj_count = torch.split(meta, [P, P, P, NG, NG])
    return PolygonBatch(to_device_async(xy, device), starts, lengths, owners, obj_first, obj_count,
                        original_scale)


def polygon_boxes(polys, num_gt):
    """Tight boxes (num_gt, 4) of each gt object's polygons and a (num_gt,) bool "has polygons"."""
    device = polys.xy.device
    owner = torch.repeat_interleave(polys.gt_index, polys.lengths, output_size=polys.xy.shape[0])
    lo = torch.full((num_gt, 2), float('inf'), device=device)
    hi = torch.full((num_gt, 2), float('-inf'), device=device)
    idx = owner.unsqueeze(1).expand(-1, 2)
    lo = lo.scatter_reduce(0, idx, polys.xy, reduce='amin')
    hi = hi.scatter_reduce(0, idx, polys.xy, reduce='amax')
    has = torch.zeros(num_gt, dtype=torch.int32, device=device).scatter_(
        0, polys.gt_index, 1) > 0
    boxes = torch.cat([lo, hi], dim=1)
    return torch.where(has.unsqueeze(1), boxes, torch.zeros_like(boxes)), has


def mask_rcnn_targets(rois, labels_int32, polys, gt, im_info, resolution, rois_orig=None,
                      fixed_slots=None):
    """Detectron's mask blobs for the sampled RoIs.

    rois: (S, 5) sampled RoIs (blob scale), labels_int32: (S,) their classes (the output of
    ``fast_rcnn.sample_rois``); polys: a ``PolygonBatch`` (or the loader's roidb list, packed
    here); gt: the ``GtBatch`` the RoIs were labelled with; im_info: (N, 3); resolution: M,
    the side of the mask targets (``MRCNN.RESOLUTION``); rois_orig: (S, 4)
    the RoIs at the original image scale (``sample_rois``' ``sampled_boxes``; default: rois
    times 1 / im_scale).

    ``fixed_slots``: for ``sample_rois(..., fixed_slots=True)``'s output (B rows per image,
    labels -1 on padding rows), (B, F, fg_count) with F >= each image's foreground count
    (``round(FG_FRACTION * BATCH_SIZE_PER_IM)``, at least 1) and ``fg_count`` (N,) its
    ``fg_count``: the mask RoIs are then the first F rows of every image (R_m = N x F, no host
    synchronisation), those beyond its mask RoIs flagged False in ``mask_roi_valid`` (R_m,)
    with an all -1 target and class 0, so the loss ignores them.
    """
    M = int(resolution)
    device = rois.device
    if not isinstance(gt, GtBatch):
        roidb = gt
        gt = pack_gt(roidb, device)
        if not isinstance(polys, PolygonBatch):
            polys = pack_polygons(roidb, gt.valid.shape[1], device)
    elif not isinstance(polys, PolygonBatch):
        polys = pack_polygons(polys, gt.valid.shape[1], device)
    im_info = torch.as_tensor(im_info, device=device, dtype=torch.float32)
    N, G = gt.valid.shape
    S = rois.shape[0]
    labels = labels_int32.long()
    batch = rois[:, 0].long()

    # Images without a fg RoI lend their first sampled RoI as an ignored mask RoI.
    fg = labels > 0
    mask_valid = None
    if fixed_slots is None:
        fg_per_im = torch.zeros(N, dtype=torch.long, device=device).scatter_add_(
            0, batch, fg.long())
        first = torch.full((N,), S, dtype=torch.long, device=device).scatter_reduce(
            0, batch, torch.arange(S, device=device), reduce='amin')
        lend = (fg_per_im == 0) & (first < S)                        # (N,)
        dummy = torch.zeros(S, dtype=torch.int32, device=device).scatter_reduce_(
            0, first.clamp(max=max(S - 1, 0)), lend.to(torch.int32), reduce='amax') > 0 \
            if S > 0 else fg.clone()
        has_mask = fg | dummy
        mask_inds = torch.nonzero(has_mask, as_tuple=False).flatten()   # host sync: R_m
        mb = batch[mask_inds]
    else:
        mask_inds, has_mask, mask_valid, mb = _fixed_mask_slots(labels, N, *fixed_slots)
    mask_rois = rois[mask_inds]
    mask_labels = torch.where(fg[mask_inds], labels[mask_inds], 0)
    is_fg = fg[mask_inds]

    # Match each mask RoI to the non-crowd object whose polygon box overlaps it most, at the
    # original scale.
    poly_box, has_poly = polygon_boxes(polys, N * G)                 # (N*G, 4), (N*G,)
    inv_scale = (1. / im_info[:, 2].double()).float()
    if rois_orig is None:
        roi_orig = mask_rois[:, 1:5] * inv_scale[mb].unsqueeze(1)    # (R_m, 4)
    else:
        roi_orig = rois_orig.float()[mask_inds]
    cand = poly_box.view(N, G, 4)[mb]                                # (R_m, G, 4)
    if not polys.original_scale:
        cand = cand * inv_scale[mb].view(-1, 1, 1)
    ok = (gt.valid & ~gt.is_crowd).view(-1)[mb.unsqueeze(1) * G + torch.arange(G, device=device)]
    ok &= has_poly.view(N, G)[mb]
    iou = box_iou(roi_orig.unsqueeze(1), cand).squeeze(1).masked_fill(~ok, -1.)   # (R_m, G)
    match = mb * G + iou.argmax(dim=1)                               # batch-wide gt index
    matched = is_fg & ok.any(dim=1)

    # The frame of polys_to_mask_wrt_box in the polygons' scale (the original one, as Detectron,
    # when the loader passed segms_orig): its clamp max(x2 - x1, 1) is in those pixels.
    frame = roi_orig if polys.original_scale else mask_rois[:, 1:5]
    masks = _rasterize_for_rois(frame, match, matched, polys, N * G, M)  # (R_m, M, M)
    masks = torch.where(matched.view(-1, 1, 1), masks.to(torch.int32),
                        torch.full_like(masks, -1, dtype=torch.int32))
    out = {
        'mask_rois': mask_rois,
        'roi_has_mask_int32': has_mask.to(torch.int32),
        'masks_int32': masks,
        'mask_labels_int32': mask_labels.to(torch.int32),
        'mask_inds': mask_inds,
    }
    if mask_valid is not None:
        out['mask_roi_valid'] = mask_valid
    return out


def _fixed_mask_slots(labels, N, B, F, fg_count):
    """``mask_rcnn_targets``' mask RoIs with ``fixed_slots`` (B, F, fg_count): the first F of
    each image's B rows -> (mask_inds (N * F,), has_mask (N * B,) bool, valid (N * F,) bool,
    image of each mask RoI (N * F,)). An image's mask RoIs are its fg rows, or its first row
    when it has RoIs but no fg (lent as an ignored one, as the unpadded path does)."""
    device = labels.device
    if labels.shape[0] != N * B:
        raise ValueError('mask_rcnn_targets: fixed_slots of %d rows for %d images, but %d RoIs'
                         % (B, N, labels.shape[0]))
    if not 1 <= F <= B:
        raise ValueError('mask_rcnn_targets: fixed_slots needs 1 <= F <= B, got F = %d, B = %d'
                         % (F, B))
    rows = (labels >= 0).view(N, B)                                  # the sampled (valid) rows
    lend = (fg_count == 0) & rows[:, 0]                              # (N,)
    j = torch.arange(F, device=device)
    valid = (j < fg_count.unsqueeze(1)) | ((j == 0) & lend.unsqueeze(1))     # (N, F)
    has_mask = torch.zeros((N, B), dtype=torch.bool, device=device)
    has_mask[:, :F] = valid
    mask_inds = (torch.arange(N, device=device) * B).unsqueeze(1) + j          # (N, F)
    image = torch.arange(N, device=device).repeat_interleave(F)
    return mask_inds.view(-1), has_mask.view(-1), valid.view(-1), image

def _rasterize_for_rois(boxes, match, matched, polys, num_gt, M):
    """(R, M, M) bool: the polygons of object ``match[r]`` inside box r (for matched rows).

    ``polys`` must store each object's polygons contiguously, objects in increasing gt index
    (as ``pack_polygons`` does); ``num_gt`` is the number of batch-wide gt indices (N * G).
    One op (``ops.polygon_masks_in_boxes``) when the extension has a kernel for the device,
    else the pure-torch reference ``_rasterize_for_rois_torch``; both give the same bits.
    """
    if (_ops.extension_available() and boxes.dtype == torch.float32
            and polys.xy.dtype == torch.float32 and _polygon_mask.has_kernel_for(boxes.device)):
        # -1: no object; a match >= num_gt also has none (polys.obj_first has num_gt entries).
        group = torch.where(matched, match, -1)
        return _ops.polygon_masks_in_boxes(polys.xy, polys.starts, polys.lengths,
                                           polys.obj_first, polys.obj_count, boxes, group, M)
    return _rasterize_for_rois_torch(boxes, match, matched, polys, num_gt, M)


def _rasterize_for_rois_torch(boxes, match, matched, polys, num_gt, M):
    """``_rasterize_for_rois`` in plain torch ops (one host sync): the reference and fallback."""
    device = boxes.device
    R = boxes.shape[0]
    out = torch.zeros((R, M, M), dtype=torch.bool, device=device)
    if R == 0 or polys.gt_index.numel() == 0:
        return out
    # Polygons of each object: they are stored grouped by object, in increasing gt index.
    n_polys = torch.zeros(num_gt, dtype=torch.long, device=device).scatter_add_(
        0, polys.gt_index, torch.ones_like(polys.gt_index))
    n_verts = torch.zeros(num_gt, dtype=torch.long, device=device).scatter_add_(
        0, polys.gt_index, polys.lengths)
    first_poly = torch.cumsum(n_polys, 0) - n_polys
    obj = match.clamp(max=num_gt - 1)
    use = matched & (match < num_gt)
    per_roi = torch.where(use, n_polys[obj], 0)                          # (R,) polygons
    verts_per_roi = torch.where(use, n_verts[obj], 0)                    # (R,) vertices
    # One host sync for both output sizes: (RoI, polygon) pairs and their vertices.
    Pp, V = torch.stack([per_roi.sum(), verts_per_roi.sum()]).tolist()
    if Pp == 0:
        return out
    pair_roi = torch.repeat_interleave(torch.arange(R, device=device), per_roi, output_size=Pp)
    pair_start = torch.cumsum(per_roi, 0) - per_roi
    pair_poly = first_poly[obj[pair_roi]] + torch.arange(Pp, device=device) - pair_start[pair_roi]
    lengths = polys.lengths[pair_poly]
    starts = torch.cumsum(lengths, 0) - lengths
    vert_pair = torch.repeat_interleave(torch.arange(Pp, device=device), lengths, output_size=V)
    src = polys.starts[pair_poly][vert_pair] + torch.arange(V, device=device) - starts[vert_pair]
    xy = polys.xy[src]                                                     # (V, 2)
    box = boxes[pair_roi][vert_pair]                                       # (V, 4)
    # Detectron's frame, in float32 like its numpy code: (p - x1) * M / max(x2 - x1, 1).
    w = torch.clamp(box[:, 2] - box[:, 0], min=1)
    h = torch.clamp(box[:, 3] - box[:, 1], min=1)
    norm = torch.stack([(xy[:, 0] - box[:, 0]) * M / w, (xy[:, 1] - box[:, 1]) * M / h], dim=1)
    pair_masks = rasterize_polygons(norm, starts, lengths, M, M)           # (Pp, M, M)
    out = out.view(R, M * M).to(torch.int32).index_add_(
        0, pair_roi, pair_masks.view(Pp, M * M).to(torch.int32)) > 0
    return out.view(R, M, M)


def expand_to_class_specific_mask_targets(masks_int32, mask_labels_int32, num_classes):
    """(R, M, M) targets + (R,) classes -> Detectron's (R, K * M * M) class-specific layout:
    the RoI's class slot holds its target, every other slot -1 (nothing for class 0)."""
    R, M = masks_int32.shape[0], masks_int32.shape[-1]
    out = masks_int32.new_full((R, num_classes, M * M), -1)
    labels = mask_labels_int32.long()
    fg = labels > 0
    src = torch.where(fg.view(R, 1), masks_int32.view(R, M * M), out[:, 0])
    out.scatter_(1, labels.view(R, 1, 1).expand(R, 1, M * M), src.unsqueeze(1))
    return out.view(R, num_classes * M * M)
