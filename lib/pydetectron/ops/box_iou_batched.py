"""The training targets' box overlaps in one op: IoU (or intersection over the first box's area)
of every box against every query box, per batch entry, with Detectron's ``+1`` widths.

``box_iou_batched(boxes, query_boxes, over_first_area=False)`` -> (B, N, K). It replaces the ~30
small torch ops of one broadcast IoU (``modeling/targets/overlaps.py``, which stays as the
reference and the fallback when the extension is not built) by one kernel launch: CPU (outputs
in parallel) and CUDA (one thread per output, no host synchronisation).

Shapes:
    boxes         (B1, N, 4) float32 or float64, (x1, y1, x2, y2) inclusive pixels
    query_boxes   (B2, K, 4) the same dtype, on the same device
    output        (B, N, K) in that dtype; B1 == B2, or one of them is 1 and is broadcast
                  (B = the other; B1 = 1, B2 = 0 gives B = 0). N, K or B may be 0.
Non-contiguous inputs are accepted (the op makes them contiguous).

Exactness contract: the output equals, bit for bit, ``overlaps.box_iou`` (``over_first_area``
False) and ``overlaps.box_ioa`` (True) in the inputs' dtype, i.e. torch's elementwise ops in this
order, each rounded on its own (the CUDA kernel forms no fused multiply-add):
    iw = max(min(x2a, x2b) - max(x1a, x1b) + 1, 0), ih likewise, inter = iw * ih,
    area = (x2 - x1 + 1) * (y2 - y1 + 1),
    IoU = inter / ((area_a + area_b) - inter), IoA = inter / area_a, and 0 where not inter > 0
(disjoint or degenerate boxes, and any box with a NaN coordinate).

Not differentiable: the targets never need gradients, and calling it on an input that requires
grad (with grad mode on) raises; detach first, or use the pure-torch ``overlaps`` functions.
"""
import torch

from pydetectron.ops import _ext

_OP = "box_iou_batched"

# Kernel presence per device type ("cpu" / "cuda"), asked once the extension is loaded: the
# targets ask on every call, and the dispatcher lookup is not free on the host.
def _check_boxes(t, name, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s: `%s` must be a tensor, got %s" % (_OP, name, type(t).__name__))
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError("%s: `%s` must be float32 or float64, got %s" % (_OP, name, t.dtype))
    if t.dim() != 3 or t.size(2) != 4:
        raise ValueError("%s: `%s` must have shape %s = (x1, y1, x2, y2) per box, got %s"
                         % (_OP, name, shape, tuple(t.shape)))


def _check_arguments(boxes, query_boxes, over_first_area):
    _check_boxes(boxes, "boxes", "(B1, N, 4)")
    _check_boxes(query_boxes, "query_boxes", "(B2, K, 4)")
    if query_boxes.dtype != boxes.dtype:
        raise TypeError("%s: `query_boxes` (%s) must have the dtype of `boxes` (%s)"
                        % (_OP, query_boxes.dtype, boxes.dtype))
    if query_boxes.device != boxes.device:
        raise ValueError("%s: `query_boxes` is on %s but `boxes` is on %s; both must be on the "
                         "same device" % (_OP, query_boxes.device, boxes.device))
    b1, b2 = boxes.size(0), query_boxes.size(0)
    if b1 != b2 and b1 != 1 and b2 != 1:
        raise ValueError("%s: the batch sizes of `boxes` (%d) and `query_boxes` (%d) must be "
                         "equal or one of them 1" % (_OP, b1, b2))
    if not isinstance(over_first_area, bool):
        raise TypeError("%s: `over_first_area` must be a bool, got %s"
                        % (_OP, type(over_first_area).__name__))
    if torch.is_grad_enabled() and (boxes.requires_grad or query_boxes.requires_grad):
        raise RuntimeError("%s is not differentiable: detach `boxes` and `query_boxes` (or use "
                           "pydetectron.modeling.targets.overlaps' pure-torch path)" % _OP)


def box_iou_batched(boxes, query_boxes, over_first_area=False):
    """(B, N, K) IoU (``over_first_area``: intersection / area of ``boxes``) of (B1, N, 4)
    ``boxes`` with (B2, K, 4) ``query_boxes``, batch broadcast; see the module docstring."""
    _ext.load()
    _check_arguments(boxes, query_boxes, over_first_area)
    return torch.ops.pydetectron.box_iou_batched(boxes, query_boxes, over_first_area)


def has_kernel_for(device):
    """True when the built extension has a kernel of this op for ``device`` (cpu / cuda)."""
    return _ext.has_kernel(_OP, device)


def _register():
    """The fake kernel for the C++ op (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::" + _OP)
    def _box_iou_batched_fake(boxes, query_boxes, over_first_area):
        torch._check(boxes.dim() == 3 and boxes.size(2) == 4,
                     lambda: "%s: `boxes` must have shape (B1, N, 4)" % _OP)
        torch._check(query_boxes.dim() == 3 and query_boxes.size(2) == 4,
                     lambda: "%s: `query_boxes` must have shape (B2, K, 4)" % _OP)
        torch._check(query_boxes.dtype == boxes.dtype,
                     lambda: "%s: `query_boxes` must have the dtype of `boxes`" % _OP)
        b1, b2 = boxes.size(0), query_boxes.size(0)
        torch._check(b1 == b2 or b1 == 1 or b2 == 1,
                     lambda: "%s: the batch sizes must be equal or one of them 1" % _OP)
        batch = b2 if b1 == 1 else b1
        return boxes.new_empty((batch, boxes.size(1), query_boxes.size(1)))
