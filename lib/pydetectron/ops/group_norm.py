"""GroupNorm of a channels-last map, with an optional ReLU in the same pass (the GroupNorm
configs' convolutions in NHWC keep their maps NHWC through the normalisation).

``group_norm_nhwc(x, weight, bias, num_groups, eps, relu)`` returns ``(y, mean, rstd)``: ``y``
equals ``torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)`` (then ``relu``),
channels-last like ``x``; ``mean`` and ``rstd`` are the per-(image, group) statistics (N, G)
(``rstd`` = 1 / sqrt(biased variance + eps)). Gradients flow to ``x``, ``weight`` and ``bias``
(not twice); with ``relu`` they pass where ``y`` > 0, as ``relu``'s do. float32 and float64;
C++ loops on the CPU (the reference), three kernels on CUDA (statistics spread over many
blocks, then one fused pass), and two plus one for the backward.
"""
import torch

from pydetectron.ops import _ext
from pydetectron.ops._utils import floating

_OP = "group_norm_nhwc"


def _check_arguments(x, weight, bias, num_groups):
    floating(x, _OP, "x")
    if x.dim() != 4:
        raise ValueError("%s: `x` must be a 4-D (N, C, H, W) tensor, got shape %s"
                         % (_OP, tuple(x.shape)))
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError("%s: `x` must be float32 or float64, got %s" % (_OP, x.dtype))
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("%s: `x` must be channels-last (x.permute(0, 2, 3, 1) contiguous), got "
                         "strides %s" % (_OP, x.stride()))
    c = x.size(1)
    if not isinstance(num_groups, int) or num_groups <= 0 or c % num_groups != 0:
        raise ValueError("%s: %d channels are not divisible into num_groups=%r"
                         % (_OP, c, num_groups))
    for name, t in (("weight", weight), ("bias", bias)):
        floating(t, _OP, name)
        if t.shape != (c,):
            raise ValueError("%s: `%s` must have shape (%d,), got %s"
                             % (_OP, name, c, tuple(t.shape)))
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError("%s: `%s` must be %s on %s like `x`, got %s on %s"
                            % (_OP, name, x.dtype, x.device, t.dtype, t.device))


def group_norm_nhwc(x, weight, bias, num_groups, eps=1e-5, relu=False):
    """GroupNorm (+ ReLU) of a channels-last (N, C, H, W) ``x``: ``(y, mean, rstd)`` (see the
    module docstring)."""
    _ext.load()
    _check_arguments(x, weight, bias, num_groups)
    return torch.ops.pydetectron.group_norm_nhwc(x, weight, bias, int(num_groups), float(eps),
                                                 bool(relu))


def _register():
    """Autograd and fake kernels for the C++ ops (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::group_norm_nhwc")
    def _group_norm_nhwc_fake(x, weight, bias, num_groups, eps, relu):
        torch._check(x.dim() == 4, lambda: "group_norm_nhwc: `x` must be 4-D (N, C, H, W)")
        stats = x.new_empty((x.size(0), num_groups))
        return (torch.empty_like(x, memory_format=torch.channels_last), stats,
                torch.empty_like(stats))

    @torch.library.register_fake("pydetectron::_group_norm_nhwc_backward")
    def _group_norm_nhwc_backward_fake(grad, x, weight, bias, mean, rstd, num_groups, relu):
        return (torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(weight),
                torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        x, weight, bias, num_groups, eps, relu = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.num_groups = num_groups
        ctx.relu = relu

    def backward(ctx, grad, grad_mean, grad_rstd):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = torch.ops.pydetectron._group_norm_nhwc_backward(
            grad, x, weight, bias, mean, rstd, ctx.num_groups, ctx.relu)
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None,
                None, None, None)

    torch.library.register_autograd("pydetectron::group_norm_nhwc", backward,
                                    setup_context=setup_context)
