"""Box overlaps on device tensors with Detectron's ``+1`` convention, broadcast over a batch.

``pydetectron.ops.box_iou`` is the kernel for one (N, 4) x (K, 4) pair; the training targets need
the same quantity over padded batches ((N_im, A, 4) anchors against (N_im, G, 4) ground truth),
so this module computes it batched (broadcast torch ops, or ``ops.box_iou_batched``).
Coordinates are inclusive pixels: a box's width is ``x2 - x1 + 1``, and two boxes that share a
single column of pixels intersect with width 1.

Shapes: ``...`` is any batch shape shared by both arguments (broadcastable), N and K box counts.

``box_iou`` / ``box_ioa`` run as one op (``pydetectron.ops.box_iou_batched``) when the extension
is built with a kernel for the inputs' device, the inputs are float32 / float64 of one dtype, none
requires grad, and the batch shapes fit the op's (B, N, 4) x (B | 1, K, 4) form -- every caller
in the targets does. Otherwise (and as the reference) the broadcast torch code below runs, about
30 small ops per call; both give the same bits (tests/ops/test_box_iou_batched.py).
"""
import importlib
import math

import torch

from pydetectron import ops as _ops

# The op's module (the attribute ``ops.box_iou_batched`` is the function).
_iou_op = importlib.import_module('pydetectron.ops.box_iou_batched')


def _intersection(boxes, query_boxes):
    """(..., N, 4) x (..., K, 4) -> (..., N, K) intersection areas (0 where disjoint)."""
    b = boxes.unsqueeze(-2)          # (..., N, 1, 4)
    q = query_boxes.unsqueeze(-3)    # (..., 1, K, 4)
    # x and y together (last axis): width, height of the overlap, then their product
    wh = (torch.minimum(b[..., 2:], q[..., 2:]) - torch.maximum(b[..., :2], q[..., :2]) + 1)
    wh = wh.clamp_(min=0)
    return wh[..., 0] * wh[..., 1]


def _area(boxes):
    wh = boxes[..., 2:] - boxes[..., :2] + 1
    return wh[..., 0] * wh[..., 1]


def _flat_batch(t, batch_shape):
    """``t`` (*S, M, 4) as (B, M, 4) or (1, M, 4) for the op, B the size of the broadcast batch
    shape ``batch_shape``; None when only part of S broadcasts (e.g. (2, 1) against (2, 3))."""
    s = tuple(t.shape[:-2])
    if (1,) * (len(batch_shape) - len(s)) + s == batch_shape:
        return t if t.dim() == 3 else t.reshape((math.prod(s),) + tuple(t.shape[-2:]))
    if all(d == 1 for d in s):
        return t if t.dim() == 3 else t.reshape((1,) + tuple(t.shape[-2:]))
    return None


def _overlap_op(boxes, query_boxes, over_first_area):
    """The one-op overlaps when the op applies to these inputs (see the module), else None."""
    if not (isinstance(boxes, torch.Tensor) and isinstance(query_boxes, torch.Tensor)):
        return None
    if (boxes.dtype not in (torch.float32, torch.float64) or query_boxes.dtype != boxes.dtype
            or boxes.requires_grad or query_boxes.requires_grad
            or boxes.device != query_boxes.device or boxes.dim() < 2 or query_boxes.dim() < 2
            or boxes.shape[-1] != 4 or query_boxes.shape[-1] != 4):
        return None
    if not (_ops.extension_available() and _iou_op.has_kernel_for(boxes.device)):
        return None
    try:
        batch_shape = tuple(torch.broadcast_shapes(boxes.shape[:-2], query_boxes.shape[:-2]))
    except RuntimeError:   # the batch shapes do not broadcast: the torch path raises for it
        return None
    # The targets pass (B | 1, N, 4) x (B | 1, K, 4): no reshaping before or after the op.
    a, q = _flat_batch(boxes, batch_shape), _flat_batch(query_boxes, batch_shape)
    if a is None or q is None:
        return None
    out = _ops.box_iou_batched(a, q, over_first_area)
    shape = batch_shape + (boxes.shape[-2], query_boxes.shape[-2])
    return out if out.shape == shape else out.view(shape)


def box_iou(boxes, query_boxes):
    """IoU of (..., N, 4) ``boxes`` with (..., K, 4) ``query_boxes`` -> (..., N, K).

    Same value as ``utils.boxes.bbox_overlaps`` (Detectron's cython_bbox): 0 for disjoint boxes,
    computed in the inputs' dtype. One op when the extension applies (see the module).
    """
    out = _overlap_op(boxes, query_boxes, False)
    return out if out is not None else box_iou_torch(boxes, query_boxes)


def box_iou_torch(boxes, query_boxes):
    """``box_iou`` in broadcast torch ops: the reference and the fallback."""
    inter = _intersection(boxes, query_boxes)
    union = _area(boxes).unsqueeze(-1) + _area(query_boxes).unsqueeze(-2) - inter
    # inter > 0 implies union > 0; where inter == 0 the IoU is 0 whatever the union is.
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def box_ioa(boxes, crowd_boxes):
    """Intersection over the area of ``boxes``: (..., N, 4) x (..., K, 4) -> (..., N, K).

    COCO's box IoU against an ``iscrowd`` region (``pycocotools.mask.iou(dt, gt, [1]*K)``),
    which Detectron's ``_filter_crowd_proposals`` uses on ``xyxy_to_xywh`` boxes (so the ``+1``
    widths hold here too). One op when the extension applies (see the module).
    """
    out = _overlap_op(boxes, crowd_boxes, True)
    return out if out is not None else box_ioa_torch(boxes, crowd_boxes)


def box_ioa_torch(boxes, crowd_boxes):
    """``box_ioa`` in broadcast torch ops: the reference and the fallback."""
    inter = _intersection(boxes, crowd_boxes)
    area = _area(boxes).unsqueeze(-1)
    return torch.where(inter > 0, inter / area, torch.zeros_like(inter))
