"""GroupNorm of an (N, C, H, W) map, NCHW or channels-last, with an optional residual sum and
ReLU in the same pass (a GroupNorm config's conv -> GroupNorm -> ReLU, and a residual block's end,
without the separate passes of the sum and the ReLU).

``group_norm_fused(x, weight, bias, num_groups, eps, relu, residual)`` returns
``(y, mean, rstd)``: ``y`` equals ``torch.nn.functional.group_norm(x, num_groups, weight, bias,
eps)`` (plus ``residual``, a residual block's shortcut, then the ReLU with ``relu``), in ``x``'s
layout (contiguous or channels-last); ``mean`` and ``rstd`` are the per-(image, group)
statistics (N, G) (``rstd`` = 1 / sqrt(biased variance + eps)). Gradients flow to ``x``,
``weight``, ``bias`` and ``residual`` (not twice); with ``relu`` they pass where ``y`` > 0, as
``relu``'s do. float32 and float64; C++ loops on the CPU (the reference); on CUDA the statistics
spread over many blocks, then one fused elementwise pass, and for the backward the per-channel
sums, then one elementwise pass (``csrc/group_norm/group_norm_cuda.cu``).
``group_norm_nhwc`` is the same for a channels-last ``x`` only (it refuses another layout).
"""
import torch

from pydetectron.ops import _ext
from pydetectron.ops._utils import floating



def _check_arguments(op, x, weight, bias, num_groups, residual, channels_last_only):
    floating(x, op, "x")
    if x.dim() != 4:
        raise ValueError("%s: `x` must be a 4-D (N, C, H, W) tensor, got shape %s"
                         % (op, tuple(x.shape)))
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError("%s: `x` must be float32 or float64, got %s" % (op, x.dtype))
    if not x.is_contiguous(memory_format=torch.channels_last):
        if channels_last_only:
            raise ValueError("%s: `x` must be channels-last (x.permute(0, 2, 3, 1) contiguous), "
                             "got strides %s" % (op, x.stride()))
        if not x.is_contiguous():
            raise ValueError("%s: `x` must be contiguous (NCHW) or channels-last "
                             "(x.permute(0, 2, 3, 1) contiguous), got strides %s"
                             % (op, x.stride()))
    c = x.size(1)
    if not isinstance(num_groups, int) or num_groups <= 0 or c % num_groups != 0:
        raise ValueError("%s: %d channels are not divisible into num_groups=%r"
                         % (op, c, num_groups))
    for name, t in (("weight", weight), ("bias", bias)):
        floating(t, op, name)
        if t.shape != (c,):
            raise ValueError("%s: `%s` must have shape (%d,), got %s"
                             % (op, name, c, tuple(t.shape)))
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError("%s: `%s` must be %s on %s like `x`, got %s on %s"
                            % (op, name, x.dtype, x.device, t.dtype, t.device))
    if residual is not None:
        floating(residual, op, "residual")
        if residual.shape != x.shape:
            raise ValueError("%s: `residual` must have the shape of `x` %s, got %s"
                             % (op, tuple(x.shape), tuple(residual.shape)))
        if residual.dtype != x.dtype or residual.device != x.device:
            raise TypeError("%s: `residual` must be %s on %s like `x`, got %s on %s"
                            % (op, x.dtype, x.device, residual.dtype, residual.device))


def _layout(x):
    """x's memory format as the kernels read it: contiguous wins where x is both (one channel,
    or one pixel: the same memory)."""
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _call(op, x, weight, bias, num_groups, eps, relu, residual, channels_last_only):
    _ext.load()
    _check_arguments(op, x, weight, bias, num_groups, residual, channels_last_only)
    if residual is not None:
        residual = residual.contiguous(memory_format=_layout(x))
    return torch.ops.pydetectron.group_norm_fused(x, weight, bias, int(num_groups), float(eps),
                                                  bool(relu), residual)


def group_norm_fused(x, weight, bias, num_groups, eps=1e-5, relu=False, residual=None):
    """GroupNorm (+ residual, + ReLU) of a contiguous or channels-last (N, C, H, W) ``x``:
    ``(y, mean, rstd)``, ``y`` in ``x``'s layout (see the module docstring). A ``residual`` of
    another layout is brought to ``x``'s."""
    return _call("group_norm_fused", x, weight, bias, num_groups, eps, relu, residual, False)


def group_norm_nhwc(x, weight, bias, num_groups, eps=1e-5, relu=False, residual=None):
    """``group_norm_fused`` of a channels-last (N, C, H, W) ``x`` (another layout is refused):
    ``(y, mean, rstd)``, ``y`` channels-last."""
    return _call("group_norm_nhwc", x, weight, bias, num_groups, eps, relu, residual, True)


def _register():
    """Autograd and fake kernels for the C++ ops (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::group_norm_fused")
    def _group_norm_fused_fake(x, weight, bias, num_groups, eps, relu, residual=None):
        torch._check(x.dim() == 4, lambda: "group_norm_fused: `x` must be 4-D (N, C, H, W)")
        stats = x.new_empty((x.size(0), num_groups))
        return torch.empty_like(x, memory_format=_layout(x)), stats, torch.empty_like(stats)

    @torch.library.register_fake("pydetectron::_group_norm_fused_backward")
    def _group_norm_fused_backward_fake(grad, x, weight, bias, mean, rstd, num_groups, relu):
        return (torch.empty_like(x, memory_format=_layout(x)), torch.empty_like(weight),
                torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        x, weight, bias, num_groups, eps, relu, residual = (tuple(inputs) + (None,))[:7]
        y, mean, rstd = output
        ctx.residual = residual is not None
        # with a residual the ReLU's mask is read from the output (the next layer keeps it
        # anyway); without, the kernel recomputes it from x
        ctx.save_for_backward(x, weight, bias, mean, rstd, y if ctx.residual else None)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.num_groups = num_groups
        ctx.relu = relu

    def backward(ctx, grad, grad_mean, grad_rstd):
        x, weight, bias, mean, rstd, y = ctx.saved_tensors
        relu = ctx.relu
        if ctx.residual and relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)   # relu's own backward
            relu = False
        dx, dw, db = torch.ops.pydetectron._group_norm_fused_backward(
            grad, x, weight, bias, mean, rstd, ctx.num_groups, relu)
        needs = ctx.needs_input_grad
        dres = grad if ctx.residual and needs[6] else None
        return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None,
                None, None, None, dres)

    torch.library.register_autograd("pydetectron::group_norm_fused", backward,
                                    setup_context=setup_context)
