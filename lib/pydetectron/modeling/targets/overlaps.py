"""Box overlaps on device tensors with Detectron's ``+1`` convention, broadcast over a batch.

``pydetectron.ops.box_iou`` is the kernel for one (N, 4) x (K, 4) pair; the training targets need
the same quantity over padded batches ((N_im, A, 4) anchors against (N_im, G, 4) ground truth),
so this module writes it with broadcasting. Coordinates are inclusive pixels: a box's width is
``x2 - x1 + 1``, and two boxes that share a single column of pixels intersect with width 1.

Shapes: ``...`` is any batch shape shared by both arguments (broadcastable), N and K box counts.
"""
import torch


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


def box_iou(boxes, query_boxes):
    """IoU of (..., N, 4) ``boxes`` with (..., K, 4) ``query_boxes`` -> (..., N, K).

    Same value as ``utils.boxes.bbox_overlaps`` (Detectron's cython_bbox): 0 for disjoint boxes,
    computed in the inputs' dtype.
    """
    inter = _intersection(boxes, query_boxes)
    union = _area(boxes).unsqueeze(-1) + _area(query_boxes).unsqueeze(-2) - inter
    # inter > 0 implies union > 0; where inter == 0 the IoU is 0 whatever the union is.
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def box_ioa(boxes, crowd_boxes):
    """Intersection over the area of ``boxes``: (..., N, 4) x (..., K, 4) -> (..., N, K).

    COCO's box IoU against an ``iscrowd`` region (``pycocotools.mask.iou(dt, gt, [1]*K)``),
    which Detectron's ``_filter_crowd_proposals`` uses on ``xyxy_to_xywh`` boxes (so the ``+1``
    widths hold here too).
    """
    inter = _intersection(boxes, crowd_boxes)
    area = _area(boxes).unsqueeze(-1)
    return torch.where(inter > 0, inter / area, torch.zeros_like(inter))
