"""Greedy NMS with Detectron's legacy ``+1`` box convention, class-wise NMS, and box IoU.

Boxes are (x1, y1, x2, y2), inclusive pixels: width = x2 - x1 + 1 (Detectron's convention).

``nms`` follows ``detectron/utils/cython_nms.pyx`` ``nms``: boxes are visited by decreasing score
and a box is suppressed when its IoU with an already kept box is **>=** ``iou_threshold``; the IoU
is computed in float32 for float32 boxes (float64 for float64 boxes) in Detectron's order of
operations, against the threshold rounded to that precision. Two documented differences from the
Cython function: the kept indices come back in decreasing score order (Detectron returns them
sorted by index), and equal scores are visited in increasing index order (a stable sort;
Detectron's numpy quicksort leaves ties in an unspecified order).
"""
import torch

from pydetectron.ops import _ext
from pydetectron.ops._utils import check_boxes_and_scores


def nms(boxes, scores, iou_threshold):
    """Indices (int64) of the boxes kept by greedy NMS, in decreasing score order.

    ``boxes`` (N, 4), ``scores`` (N,) of the same floating dtype and device.
    """
    _ext.load()
    check_boxes_and_scores(boxes, scores, "nms")
    return torch.ops.pydetectron.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """Class-wise NMS in one call: boxes whose ``idxs`` (N,) differ never suppress each other.

    Returns the kept indices of all classes together, in decreasing score order. The classes are
    kept apart by the kernel itself (not by shifting the boxes), so every IoU is computed from the
    boxes' own coordinates, exactly as a per-class ``nms`` would.
    """
    _ext.load()
    check_boxes_and_scores(boxes, scores, "batched_nms")
    _check_idxs(boxes, idxs, "batched_nms")
    return torch.ops.pydetectron.batched_nms(boxes, scores, idxs, float(iou_threshold))


def batched_nms_mask(boxes, scores, idxs, iou_threshold):
    """:func:`batched_nms` as keep flags: a (N,) bool tensor, True for the kept boxes, in the
    input order.

    The result's size does not depend on the data, so on CUDA the call makes no host
    synchronisation (``batched_nms`` has to read the number of kept boxes); callers that go on
    with masks (the RPN proposals) stay on the GPU.
    """
    _ext.load()
    check_boxes_and_scores(boxes, scores, "batched_nms_mask")
    _check_idxs(boxes, idxs, "batched_nms_mask")
    return torch.ops.pydetectron.batched_nms_mask(boxes, scores, idxs, float(iou_threshold))


def _check_idxs(boxes, idxs, op):
    if idxs.dim() != 1 or idxs.size(0) != boxes.size(0):
        raise ValueError("%s: `idxs` must have shape (N,) with N = boxes.size(0) = %d, "
                         "got %s" % (op, boxes.size(0), tuple(idxs.shape)))
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError("%s: `idxs` must be an integer tensor, got %s" % (op, idxs.dtype))
    if idxs.device != boxes.device:
        raise ValueError("%s: `idxs` is on %s but `boxes` is on %s"
                         % (op, idxs.device, boxes.device))


def box_iou(boxes_a, boxes_b):
    """IoU matrix (A, B) of ``boxes_a`` (A, 4) and ``boxes_b`` (B, 4) with ``+1`` widths.

    Pure torch (any device, differentiable); computed in the boxes' dtype.
    """
    for name, b in (("boxes_a", boxes_a), ("boxes_b", boxes_b)):
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError("box_iou: `%s` must have shape (N, 4) = (x1, y1, x2, y2), got %s"
                             % (name, tuple(b.shape)))
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + 1) * (boxes_a[:, 3] - boxes_a[:, 1] + 1)  # (A,)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + 1) * (boxes_b[:, 3] - boxes_b[:, 1] + 1)  # (B,)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])       # (A, B, 2)
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])   # (A, B, 2)
    wh = (bottom_right - top_left + 1).clamp(min=0)                           # (A, B, 2)
    inter = wh[..., 0] * wh[..., 1]                                           # (A, B)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _register():
    """Fake kernels (data-dependent output size) for torch.compile."""

    @torch.library.register_fake("pydetectron::nms")
    def _nms_fake(boxes, scores, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                     lambda: "nms: `boxes` must have shape (N, 4)")
        n = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((n,), dtype=torch.long)

    @torch.library.register_fake("pydetectron::batched_nms_mask")
    def _batched_nms_mask_fake(boxes, scores, idxs, iou_threshold):
        return boxes.new_empty((boxes.size(0),), dtype=torch.bool)

    @torch.library.register_fake("pydetectron::batched_nms")
    def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                     lambda: "batched_nms: `boxes` must have shape (N, 4)")
        n = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((n,), dtype=torch.long)
