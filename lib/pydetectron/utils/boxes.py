"""Box utilities in Detectron's conventions.

Boxes are (x1, y1, x2, y2) in absolute pixels with *inclusive* corners, so a box's width is
``x2 - x1 + 1`` (Detectron's legacy "+1"). Deltas are (dx, dy, dw, dh) per box, tiled per class as
(N, 4K). Functions marked [t] accept torch tensors as well as numpy arrays and return the same
kind; they never modify their inputs (Detectron's clip functions did; ours return a copy).

Shapes: N boxes, K classes (columns of a tiled (N, 4K) array), M query boxes.
"""
import math

import numpy as np

try:  # torch is optional here so the data code can use this module anywhere
    import torch
except ImportError:  # pragma: no cover
    torch = None

# Detectron's cfg.BBOX_XFORM_CLIP default: never let exp(dw) scale a box by more than 1000/16.
BBOX_XFORM_CLIP = math.log(1000. / 16.)


def _is_tensor(x):
    return torch is not None and isinstance(x, torch.Tensor)


def _copy(x):
    return x.clone() if _is_tensor(x) else np.array(x, copy=True)


def _exp(x):
    return torch.exp(x) if _is_tensor(x) else np.exp(x)


def _log(x):
    return torch.log(x) if _is_tensor(x) else np.log(x)


def _clamp(x, lo=None, hi=None):
    """Elementwise clamp to [lo, hi] for either kind (hi/lo may be None)."""
    if _is_tensor(x):
        return x.clamp(min=lo, max=hi)
    return np.clip(x, lo, hi)


def _stack_cols(cols, like):
    if _is_tensor(like):
        return torch.stack(cols, dim=1)
    return np.stack(cols, axis=1)


def boxes_area(boxes):
    """[t] Area of (N, 4) boxes with the +1 convention."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    areas = w * h
    neg = (areas < 0).any() if _is_tensor(areas) else np.any(areas < 0)
    if neg:
        raise ValueError("boxes_area: found boxes with negative area (x2 < x1 - 1 or y2 < y1 - 1)")
    return areas


def unique_boxes(boxes, scale=1.0):
    """Indices (sorted) of the unique rows of (N, 4) boxes after rounding at ``scale``."""
    v = np.array([1, 1e3, 1e6, 1e9])
    hashes = np.round(np.asarray(boxes) * scale).dot(v)
    _, index = np.unique(hashes, return_index=True)
    return np.sort(index)


def xywh_to_xyxy(xywh):
    """(x, y, w, h) -> (x1, y1, x2, y2); a list/tuple of 4 or an (N, 4) array.

    A width or height below 1 collapses to a one-pixel box (x2 = x1), as Detectron does.
    """
    if isinstance(xywh, (list, tuple)):
        if len(xywh) != 4:
            raise ValueError("xywh_to_xyxy: expected 4 numbers, got %d" % len(xywh))
        x1, y1 = xywh[0], xywh[1]
        x2 = x1 + np.maximum(0., xywh[2] - 1.)
        y2 = y1 + np.maximum(0., xywh[3] - 1.)
        return (x1, y1, x2, y2)
    xywh = np.asarray(xywh)
    return np.hstack((xywh[:, 0:2], xywh[:, 0:2] + np.maximum(0, xywh[:, 2:4] - 1)))


def xyxy_to_xywh(xyxy):
    """(x1, y1, x2, y2) -> (x, y, w, h) with w = x2 - x1 + 1; a list/tuple of 4 or an (N, 4) array."""
    if isinstance(xyxy, (list, tuple)):
        if len(xyxy) != 4:
            raise ValueError("xyxy_to_xywh: expected 4 numbers, got %d" % len(xyxy))
        x1, y1 = xyxy[0], xyxy[1]
        return (x1, y1, xyxy[2] - x1 + 1, xyxy[3] - y1 + 1)
    xyxy = np.asarray(xyxy)
    return np.hstack((xyxy[:, 0:2], xyxy[:, 2:4] - xyxy[:, 0:2] + 1))


def filter_small_boxes(boxes, min_size):
    """Indices of (N, 4) boxes whose width and height are both strictly above ``min_size``."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.where((w > min_size) & (h > min_size))[0]


def clip_xyxy_to_image(x1, y1, x2, y2, height, width):
    """Clip coordinates (scalars or arrays) to [0, width - 1] x [0, height - 1]."""
    x1 = np.minimum(width - 1., np.maximum(0., x1))
    y1 = np.minimum(height - 1., np.maximum(0., y1))
    x2 = np.minimum(width - 1., np.maximum(0., x2))
    y2 = np.minimum(height - 1., np.maximum(0., y2))
    return x1, y1, x2, y2


def clip_boxes_to_image(boxes, height, width):
    """[t] Clip (N, 4) boxes to the image (inclusive corners: max coordinate is size - 1)."""
    return clip_tiled_boxes(boxes, (height, width))


def clip_tiled_boxes(boxes, im_shape):
    """[t] Clip (N, 4K) boxes to an image of shape (height, width, ...)."""
    if boxes.shape[1] % 4 != 0:
        raise ValueError("clip_tiled_boxes: boxes must have 4K columns, got shape %s"
                         % (tuple(boxes.shape),))
    out = _copy(boxes)
    h_max, w_max = float(im_shape[0]) - 1, float(im_shape[1]) - 1
    out[:, 0::4] = _clamp(boxes[:, 0::4], 0, w_max)
    out[:, 1::4] = _clamp(boxes[:, 1::4], 0, h_max)
    out[:, 2::4] = _clamp(boxes[:, 2::4], 0, w_max)
    out[:, 3::4] = _clamp(boxes[:, 3::4], 0, h_max)
    return out


def bbox_transform(boxes, deltas, weights=(1.0, 1.0, 1.0, 1.0), clip=BBOX_XFORM_CLIP):
    """[t] Decode (N, 4K) ``deltas`` relative to (N, 4) ``boxes`` into (N, 4K) boxes.

    Detectron's decoding: centres at x1 + 0.5 w, dw/dh clamped at ``clip`` before exp, and
    x2 = ctr + 0.5 w' - 1 (the -1 undoes the +1 of the width; the asymmetry is intended).
    """
    if boxes.shape[0] == 0:
        if _is_tensor(deltas):
            return deltas.new_zeros((0, deltas.shape[1]))
        return np.zeros((0, deltas.shape[1]), dtype=deltas.dtype)
    wx, wy, ww, wh = weights
    # (float32 only: its exp was checked to round alike in the CPU's vector and scalar loops,
    # which the pairs' layout may assign differently)
    if (_is_tensor(deltas) and _is_tensor(boxes) and deltas.dtype == torch.float32
            and wx == wy and ww == wh and deltas.shape[1] % 4 == 0):
        return _bbox_transform_tensor(boxes.to(deltas.dtype), deltas, wx, ww, clip)
    boxes = boxes.to(deltas.dtype) if _is_tensor(boxes) else boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = _clamp(deltas[:, 2::4] / ww, hi=clip)
    dh = _clamp(deltas[:, 3::4] / wh, hi=clip)

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = _exp(dw) * widths[:, None]
    pred_h = _exp(dh) * heights[:, None]

    pred = deltas.new_zeros(deltas.shape) if _is_tensor(deltas) else np.zeros(deltas.shape, deltas.dtype)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return pred


def box_centres_sizes(boxes):
    """Tensor boxes (..., 4) -> (..., 2) centres and (..., 2) sizes with ``+1`` widths: the
    boxes' part of ``bbox_transform``, in its arithmetic (lo + 0.5 * (hi - lo + 1))."""
    lo, hi = boxes.split(2, -1)
    size = hi - lo + 1.0
    return lo + 0.5 * size, size


def decode_centres_sizes(ctr, size, d_ctr, d_size, clip, dim):
    """``bbox_transform``'s decoding on (x, y) pairs of tensors: the boxes' centres and sizes
    (``box_centres_sizes``) moved by the deltas (already divided by their weights), dw/dh
    clamped at ``clip``; the (x1, y1) and (x2, y2) pairs concatenated along ``dim``."""
    pred_ctr = d_ctr * size + ctr
    half = 0.5 * (_exp(_clamp(d_size, hi=clip)) * size)
    return torch.cat([pred_ctr - half, pred_ctr + half - 1], dim=dim)


def _bbox_transform_tensor(boxes, deltas, w_xy, w_wh, clip):
    """``bbox_transform`` of float32 tensors with the x and y weights equal (as are Detectron's):
    the same arithmetic on (N, K, 2) pairs, so a third of the operators (each costs host time on
    a GPU), with bit-identical results (every element goes through the same float operations; a
    weight of 1 is left out: dividing by 1 is exact)."""
    n, k = deltas.shape[0], deltas.shape[1] // 4
    ctr, size = (t.unsqueeze(1) for t in box_centres_sizes(boxes))   # (N, 1, 2) each
    d_ctr, d_size = deltas.reshape(n, k, 4).split(2, 2)       # (N, K, 2) each
    if w_xy != 1:
        d_ctr = d_ctr / w_xy
    if w_wh != 1:
        d_size = d_size / w_wh
    return decode_centres_sizes(ctr, size, d_ctr, d_size, clip, dim=2).view(n, 4 * k)


def bbox_transform_inv(boxes, gt_boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """[t] Encode (N, 4) ``gt_boxes`` relative to (N, 4) ``boxes``: the (N, 4) regression targets."""
    wx, wy, ww, wh = weights
    if _is_tensor(boxes) and _is_tensor(gt_boxes) and wx == wy and ww == wh:
        return _bbox_transform_inv_tensor(boxes, gt_boxes, wx, ww)
    ex_w = boxes[:, 2] - boxes[:, 0] + 1.0
    ex_h = boxes[:, 3] - boxes[:, 1] + 1.0
    ex_ctr_x = boxes[:, 0] + 0.5 * ex_w
    ex_ctr_y = boxes[:, 1] + 0.5 * ex_h

    gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0
    gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0
    gt_ctr_x = gt_boxes[:, 0] + 0.5 * gt_w
    gt_ctr_y = gt_boxes[:, 1] + 0.5 * gt_h

    dx = wx * (gt_ctr_x - ex_ctr_x) / ex_w
    dy = wy * (gt_ctr_y - ex_ctr_y) / ex_h
    dw = ww * _log(gt_w / ex_w)
    dh = wh * _log(gt_h / ex_h)
    return _stack_cols([dx, dy, dw, dh], boxes)


def _bbox_transform_inv_tensor(boxes, gt_boxes, w_xy, w_wh):
    """``bbox_transform_inv`` of tensors with the x and y weights equal (as are Detectron's): the
    same float operations on (N, 2) pairs, a third of the operators (host time on a GPU), the
    same bits (a weight of 1 is left out: multiplying by 1 is exact)."""
    ex_ctr, ex_size = box_centres_sizes(boxes)
    gt_ctr, gt_size = box_centres_sizes(gt_boxes)
    d_ctr = gt_ctr - ex_ctr
    if w_xy != 1:
        d_ctr = w_xy * d_ctr
    d_size = torch.log(gt_size / ex_size)
    if w_wh != 1:
        d_size = w_wh * d_size
    return torch.cat([d_ctr / ex_size, d_size], dim=1)


def bbox_overlaps(boxes, query_boxes):
    """IoU (float32, +1 convention) between (N, 4) ``boxes`` and (M, 4) ``query_boxes``: (N, M).

    numpy only (Detectron's cython_bbox); on tensors use ``pydetectron.ops.box_iou``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    query_boxes = np.asarray(query_boxes, dtype=np.float64)
    n, m = boxes.shape[0], query_boxes.shape[0]
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.float32)
    area_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_q = (query_boxes[:, 2] - query_boxes[:, 0] + 1) * (query_boxes[:, 3] - query_boxes[:, 1] + 1)
    iw = (np.minimum(boxes[:, None, 2], query_boxes[None, :, 2])
          - np.maximum(boxes[:, None, 0], query_boxes[None, :, 0]) + 1)
    ih = (np.minimum(boxes[:, None, 3], query_boxes[None, :, 3])
          - np.maximum(boxes[:, None, 1], query_boxes[None, :, 1]) + 1)
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    union = area_b[:, None] + area_q[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / union, 0.)
    return iou.astype(np.float32)


def expand_boxes(boxes, scale):
    """[t] Scale (N, 4) boxes about their centres by ``scale`` (no +1: Detectron's mask pasting)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * .5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * .5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * .5
    y_c = (boxes[:, 3] + boxes[:, 1]) * .5
    return _stack_cols([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], boxes)


def flip_boxes(boxes, im_width):
    """[t] Mirror (N, 4K) boxes horizontally in an image of width ``im_width``."""
    flipped = _copy(boxes)
    flipped[:, 0::4] = im_width - boxes[:, 2::4] - 1
    flipped[:, 2::4] = im_width - boxes[:, 0::4] - 1
    return flipped


def aspect_ratio(boxes, aspect_ratio):
    """Stretch (N, 4K) boxes horizontally by ``aspect_ratio`` (test-time aspect-ratio augmentation)."""
    out = _copy(boxes)
    out[:, 0::4] = aspect_ratio * boxes[:, 0::4]
    out[:, 2::4] = aspect_ratio * boxes[:, 2::4]
    return out


# Detectron's TEST.BBOX_VOTE.SCORING_METHOD values
BOX_VOTING_METHODS = ('ID', 'TEMP_AVG', 'AVG', 'IOU_AVG', 'GENERALIZED_AVG', 'QUASI_SUM')


def box_voting(top_dets, all_dets, thresh, scoring_method='ID', beta=1.0):
    """Refine (N, 5) ``top_dets`` (x1, y1, x2, y2, score; e.g. NMS survivors) by voting with
    (M, 5) ``all_dets`` (https://arxiv.org/abs/1505.01749) -> a new (N, 5) array.

    Each top box becomes the score-weighted mean of the boxes of ``all_dets`` that overlap it with
    IoU >= ``thresh`` (itself included when it is one of them). Its score, by ``scoring_method``
    (Detectron's cfg.TEST.BBOX_VOTE.SCORING_METHOD), with ws the voters' scores:
      'ID' keeps it; 'AVG' mean(ws); 'IOU_AVG' mean of ws weighted by the voters' IoU;
      'TEMP_AVG' mean of P(class) after softening the two-way distribution (ws, 1 - ws) with
      temperature ``beta``; 'GENERALIZED_AVG' mean(ws ** beta) ** (1 / beta);
      'QUASI_SUM' sum(ws) / len(ws) ** beta.
    numpy only.
    """
    if scoring_method not in BOX_VOTING_METHODS:
        raise ValueError("box_voting: unknown scoring_method %r (expected one of %s)"
                         % (scoring_method, ", ".join(BOX_VOTING_METHODS)))
    top_dets_out = np.array(top_dets, copy=True)
    all_boxes = np.asarray(all_dets)[:, :4]
    all_scores = np.asarray(all_dets)[:, 4]
    top_to_all_overlaps = bbox_overlaps(top_dets_out[:, :4], all_boxes)  # (N, M)
    for k in range(top_dets_out.shape[0]):
        inds_to_vote = np.where(top_to_all_overlaps[k] >= thresh)[0]
        ws = all_scores[inds_to_vote]
        top_dets_out[k, :4] = np.average(all_boxes[inds_to_vote, :], axis=0, weights=ws)
        if scoring_method == 'TEMP_AVG':
            P = np.vstack((ws, 1.0 - ws))
            with np.errstate(divide='ignore'):  # a score of exactly 1 gives log(0) = -inf
                X = np.log(P / np.max(P, axis=0))
            X_exp = np.exp(X / beta)
            top_dets_out[k, 4] = (X_exp / np.sum(X_exp, axis=0))[0].mean()
        elif scoring_method == 'AVG':
            top_dets_out[k, 4] = ws.mean()
        elif scoring_method == 'IOU_AVG':
            top_dets_out[k, 4] = np.average(ws, weights=top_to_all_overlaps[k, inds_to_vote])
        elif scoring_method == 'GENERALIZED_AVG':
            top_dets_out[k, 4] = np.mean(ws ** beta) ** (1.0 / beta)
        elif scoring_method == 'QUASI_SUM':
            top_dets_out[k, 4] = ws.sum() / float(len(ws)) ** beta
    return top_dets_out
