"""Argument checks and normalisation shared by the op wrappers (and the channels-last test
that the GroupNorm module shares with them).

The C++ kernels check the same things; checking here first gives the Python exception types
(ValueError / TypeError) and keeps bad input from ever reaching a kernel.
"""
import torch


def pair(value, name):
    """``output_size`` as ``(height, width)``: an int or a pair of positive ints."""
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = value
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError("`%s` must be an int or a pair of ints (height, width), got %r"
                         % (name, value)) from None
    if h <= 0 or w <= 0:
        raise ValueError("`%s` must be positive, got %r" % (name, value))
    return h, w


def floating(t, op, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s: `%s` must be a tensor, got %s" % (op, name, type(t).__name__))
    if not t.is_floating_point():
        raise TypeError("%s: `%s` must be float32, float64, float16 or bfloat16, got %s"
                        % (op, name, t.dtype))


def check_rois(rois, op):
    """``rois`` a floating (K, 5) tensor of (batch_index, x1, y1, x2, y2)."""
    floating(rois, op, "rois")
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError("%s: `rois` must have shape (K, 5) = (batch_index, x1, y1, x2, y2), "
                         "got %s" % (op, tuple(rois.shape)))


def check_features_and_rois(input, rois, op):
    """``input`` (N, C, H, W) and ``rois`` (K, 5), floating, on one device."""
    floating(input, op, "input")
    if input.dim() != 4:
        raise ValueError("%s: `input` must be a 4-D (N, C, H, W) tensor, got shape %s"
                         % (op, tuple(input.shape)))
    check_rois(rois, op)
    if rois.device != input.device:
        raise ValueError("%s: `rois` is on %s but `input` is on %s; both must be on the same "
                         "device" % (op, rois.device, input.device))


def check_boxes_and_scores(boxes, scores, op):
    """``boxes`` (N, 4) and ``scores`` (N,), of one floating dtype, on one device."""
    floating(boxes, op, "boxes")
    floating(scores, op, "scores")
    if boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError("%s: `boxes` must have shape (N, 4) = (x1, y1, x2, y2), got %s"
                         % (op, tuple(boxes.shape)))
    if scores.dim() != 1 or scores.size(0) != boxes.size(0):
        raise ValueError("%s: `scores` must have shape (N,) with N = boxes.size(0) = %d, got %s"
                         % (op, boxes.size(0), tuple(scores.shape)))
    if scores.dtype != boxes.dtype:
        raise TypeError("%s: `scores` (%s) must have the dtype of `boxes` (%s)"
                        % (op, scores.dtype, boxes.dtype))
    if scores.device != boxes.device:
        raise ValueError("%s: `scores` is on %s but `boxes` is on %s; both must be on the same "
                         "device" % (op, scores.device, boxes.device))


def channels_last_only(x):
    """Whether a 4-D tensor is laid out channels-last (NHWC in memory) and not also contiguous
    (as tensors of one channel or one pixel are, which both layouts describe)."""
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))
