"""Numpy ports of Detectron's per-image test path, written for the tests (not imported by the package).

Each follows Detectron's own structure -- one image at a time, Python loops over classes -- so that
the batched device code of ``pydetectron.modeling`` can be checked against it.
"""
import math

import numpy as np

# Written out here rather than imported from the package, so that the references never call the
# code they check (pydetectron.ops.nms, pydetectron.utils.boxes.bbox_transform).
BBOX_XFORM_CLIP = math.log(1000. / 16.)


def nms(dets_boxes, scores, thresh):
    """Detectron's greedy NMS (utils/cython_nms.pyx) in float32: boxes in score order (equal
    scores keep their input order), each suppressing the later ones whose IoU (+1 widths) with it
    exceeds ``thresh``. Returns the kept indices."""
    boxes = np.asarray(dets_boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
                       + np.float32(1))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
                       + np.float32(1))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= thresh]
    return np.array(keep, dtype=np.int64)


def bbox_transform(boxes, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
    """Detectron's utils/boxes.py bbox_transform (float32, +1 widths, dw/dh clipped)."""
    if boxes.shape[0] == 0:
        return np.zeros((0, deltas.shape[1]), dtype=deltas.dtype)
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, BBOX_XFORM_CLIP)
    dh = np.minimum(deltas[:, 3::4] / wh, BBOX_XFORM_CLIP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = np.exp(dw) * widths[:, None]
    pred_h = np.exp(dh) * heights[:, None]
    out = np.zeros(deltas.shape, dtype=deltas.dtype)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return out


def clip_tiled_boxes(boxes, im_shape):
    """Detectron's clip_tiled_boxes: x into [0, width - 1], y into [0, height - 1]."""
    boxes = boxes.copy()
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def anchors(stride, sizes, aspect_ratios):
    """Detectron's generate_anchors: ratio windows around (0, 0, stride-1, stride-1), then scales."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, xc, yc):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1),
                          yc + 0.5 * (hs - 1)))

    base = np.array([0, 0, stride - 1, stride - 1], dtype=float)
    w, h, xc, yc = whctrs(base)
    ratios = np.array(aspect_ratios, dtype=float)
    ws = np.round(np.sqrt(w * h / ratios))
    ratio_anchors = mk(ws, np.round(ws * ratios), xc, yc)
    scales = np.array(sizes, dtype=float) / stride
    out = []
    for a in ratio_anchors:
        w, h, xc, yc = whctrs(a)
        out.append(mk(w * scales, h * scales, xc, yc))
    return np.vstack(out)


def proposals_one_image(scores, deltas, im_info, cell_anchors, stride, pre_nms_top_n,
                        post_nms_top_n, nms_thresh, min_size):
    """GenerateProposalsOp.proposals_for_one_image: scores (A, H, W), deltas (4A, H, W)."""
    a, h, w = scores.shape
    sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    all_anchors = (cell_anchors[None] + shifts[:, None]).reshape(-1, 4)
    deltas = deltas.transpose(1, 2, 0).reshape(-1, 4)
    scores = scores.transpose(1, 2, 0).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    if 0 < pre_nms_top_n < len(scores):
        order = order[:pre_nms_top_n]
    deltas, all_anchors, scores = deltas[order], all_anchors[order], scores[order]
    boxes = bbox_transform(all_anchors.astype(np.float32), deltas)
    boxes = clip_tiled_boxes(boxes, im_info[:2])
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    min_size = max(min_size, 1)
    keep = np.where(((boxes[:, 2] - boxes[:, 0]) / im_info[2] + 1 >= min_size)
                    & ((boxes[:, 3] - boxes[:, 1]) / im_info[2] + 1 >= min_size)
                    & (boxes[:, 0] + ws / 2. < im_info[1]) & (boxes[:, 1] + hs / 2. < im_info[0]))[0]
    boxes, scores = boxes[keep], scores[keep]
    if nms_thresh > 0:
        keep = nms(boxes, scores, nms_thresh)
        if post_nms_top_n > 0:
            keep = keep[:post_nms_top_n]
        boxes, scores = boxes[keep], scores[keep]
    return boxes, scores


def cython_nms(dets, thresh):
    """detectron/utils/cython_nms.pyx ``nms`` in numpy: float32 IoU with +1 widths, visits by
    decreasing score, ``>=`` suppresses; the kept indices come back in increasing (input) order.
    Score ties are visited in increasing index order (the callers here have none)."""
    dets = dets.astype(np.float32, copy=False)
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(dets), dtype=bool)
    thresh = np.float32(thresh)
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        for j in order[a + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]) + one)
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]) + one)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = True
    return np.where(~suppressed)[0]


def box_results_with_nms_and_limit(scores, boxes, score_thresh, nms_thresh, detections_per_im):
    """core/test.py box_results_with_nms_and_limit (hard NMS) for one image.

    Returns boxes (D, 4), scores (D,), classes (D,), class by class, each class in RoI order
    (the order ``cython_nms`` and ``np.where`` leave the rows in).
    """
    num_classes = scores.shape[1]
    cls_boxes = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
    for j in range(1, num_classes):
        inds = np.where(scores[:, j] > score_thresh)[0]
        dets_j = np.hstack((boxes[inds, j * 4:(j + 1) * 4], scores[inds, j][:, None])).astype(
            np.float32)
        cls_boxes[j] = dets_j[cython_nms(dets_j, nms_thresh)]
    if detections_per_im > 0:
        image_scores = np.hstack([cls_boxes[j][:, -1] for j in range(1, num_classes)])
        if len(image_scores) > detections_per_im:
            image_thresh = np.sort(image_scores)[-detections_per_im]
            for j in range(1, num_classes):
                cls_boxes[j] = cls_boxes[j][cls_boxes[j][:, -1] >= image_thresh]
    res = np.vstack([cls_boxes[j] for j in range(1, num_classes)])
    classes = np.concatenate([np.full(len(cls_boxes[j]), j) for j in range(1, num_classes)])
    return res[:, :4], res[:, 4], classes
