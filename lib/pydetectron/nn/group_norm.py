"""GroupNorm as Detectron configures it (``GROUP_NORM.DIM_PER_GP`` / ``NUM_GROUPS`` / ``EPSILON``).

Detectron's SpatialGN computes what ``torch.nn.GroupNorm`` computes (per-group mean and biased
variance over C/G x H x W, then a per-channel scale ``_gn_s`` and bias ``_gn_b``), so the module is
PyTorch's (``GroupNorm2d``, a ``torch.nn.GroupNorm``); only the choice of the number of groups is
Detectron's (``utils/net.py:get_group_gn``).

On a GPU, for a contiguous (NCHW) input, ``GroupNorm2d`` computes the per-group statistics with a
reduction that spreads each group over many thread blocks (``torch.var_mean``), where PyTorch's
GroupNorm kernel gives each (image, group) one block: 64 blocks for 2 images of 32 groups, which
left most of an H100 idle (6.5 of GroupNorm's 14.7 ms of a training step's 53.6 ms on the GPU, at
2 images of 800 x 1333: BENCHMARK.md). The normalisation is one fused multiply-add per element,
and the backward pass is PyTorch's own GroupNorm backward given those statistics. A channels-last
float32 CUDA input (the GroupNorm configs trained with ``--channels_last``) goes through the
extension's ``pydetectron.ops.group_norm_fused``, which stays channels-last and, called from
``forward_relu`` / ``forward_add_relu``, applies the following ReLU (and a residual block's sum)
in the same pass; without the extension's CUDA kernels, ``_GroupNormNHWCFunction`` (torch ops)
keeps the layout. With ``PYDETECTRON_FUSED_GROUP_NORM=1`` in the environment, the contiguous
inputs of few rows above take the extension's kernel too (its NCHW statistics spread over many
blocks as well, and the ReLU and residual sum in its pass): opt-in until its CUDA kernels have run
on a GPU (``tests/ops/test_group_norm.py``'s CUDA tests). The CPU, other memory formats and
double backward keep PyTorch's module.
"""
import logging
import os

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pydetectron.ops import _ext
from pydetectron.ops._utils import channels_last_only
from pydetectron.ops.group_norm import group_norm_fused

logger = logging.getLogger(__name__)

__all__ = ["get_group_gn", "GroupNorm", "GroupNorm2d", "group_norm"]


def get_group_gn(dim, dim_per_gp=-1, num_groups=32):
    """Number of GroupNorm groups for ``dim`` channels: dim / dim_per_gp, or num_groups.

    Exactly one of ``dim_per_gp`` and ``num_groups`` may be positive (the other -1), as in
    Detectron's ``GROUP_NORM`` config.
    """
    if not (dim_per_gp == -1 or num_groups == -1):
        raise ValueError("GroupNorm: set either GROUP_NORM.DIM_PER_GP (%r) or GROUP_NORM.NUM_GROUPS "
                         "(%r), the other must be -1" % (dim_per_gp, num_groups))
    if dim_per_gp > 0:
        if dim % dim_per_gp != 0:
            raise ValueError("GroupNorm: %d channels are not divisible by GROUP_NORM.DIM_PER_GP=%d"
                             % (dim, dim_per_gp))
        group_gn = dim // dim_per_gp
    else:
        if num_groups <= 0 or dim % num_groups != 0:
            raise ValueError("GroupNorm: %d channels are not divisible by GROUP_NORM.NUM_GROUPS=%d"
                             % (dim, num_groups))
        group_gn = num_groups
    if group_gn < 1:  # Detectron resets to 1 with a warning
        logger.warning("GroupNorm over %d channels: %d groups < 1; using 1", dim, group_gn)
        group_gn = 1
    return group_gn


class _GroupNormFunction(torch.autograd.Function):
    """Affine GroupNorm of a contiguous (N, C, *) CUDA tensor: statistics by ``torch.var_mean`` over
    (N, G, C/G x HW), output ``x * a + b`` with per-(image, channel) a and b; backward by
    ``aten.native_group_norm_backward`` from the saved statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        n, c = x.shape[:2]
        g = num_groups
        var, mean = torch.var_mean(x.view(n, g, -1), dim=2, correction=0)
        rstd = var.add_(eps).rsqrt_()                                       # (N, G)
        scale = rstd.view(n, g, 1) * weight.view(1, g, c // g)              # (N, G, C/G)
        shift = torch.addcmul(bias.view(1, g, c // g), mean.view(n, g, 1), scale, value=-1)
        view = (n, c) + (1,) * (x.dim() - 2)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups = num_groups
        return torch.addcmul(shift.view(view), x, scale.view(view))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x, mean, rstd, weight, n, c, x[0, 0].numel(), ctx.num_groups,
            list(ctx.needs_input_grad[:3]))
        return dx, dw, db, None, None


class _GroupNormNHWCFunction(torch.autograd.Function):
    """Affine GroupNorm of a channels-last (N, C, H, W) tensor, kept channels-last: PyTorch's
    GroupNorm makes such an input contiguous (NCHW) and returns NCHW, so every channels-last
    convolution around it would transpose its tensors back and forth. Here the statistics come
    from ``torch.var_mean`` over the (N, HW, G, C/G) view of the NHWC memory; the output is
    ``x * a + b`` with per-(image, channel) a and b (channels-last, as ``x``); the backward pass
    reduces over HW per (image, channel) -- sums of dy and of dy * x -- and forms dx as
    ``dy * A + x * B + C`` (PyTorch's GroupNorm backward, the same terms)."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        n, c, h, w = x.shape
        g = num_groups
        nhwc = x.permute(0, 2, 3, 1)                                       # a view: contiguous
        var, mean = torch.var_mean(nhwc.reshape(n, h * w, g, c // g), dim=(1, 3), correction=0)
        rstd = var.add_(eps).rsqrt_()                                       # (N, G)
        scale = rstd.view(n, g, 1) * weight.view(1, g, c // g)              # (N, G, C/G)
        shift = torch.addcmul(bias.view(1, g, c // g), mean.view(n, g, 1), scale, value=-1)
        # the output is a channels-last tensor of its own (not a view of an NHWC one: the
        # ReLU after a GroupNorm runs in place, which autograd forbids on a Function's view)
        y = torch.empty_like(x, memory_format=torch.channels_last)
        torch.addcmul(shift.view(n, 1, 1, c), nhwc, scale.view(n, 1, 1, c),
                      out=y.permute(0, 2, 3, 1))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        g = ctx.num_groups
        cg = c // g
        dy = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        xs = x.permute(0, 2, 3, 1)
        sum_dy = dy.sum(dim=(1, 2))                                         # (N, C)
        sum_dy_x = (dy * xs).sum(dim=(1, 2))                                # (N, C)
        rstd_c = rstd.repeat_interleave(cg, dim=1)                          # (N, C)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # with s = sum over the group of w * sum(dy * x), t = sum of w * sum(dy):
            # dx = rstd * w * dy + B * x + C, B = (t * mean - s) * rstd^3 / D,
            # C = -B * mean - t * rstd / D, D = C/G x H x W
            d = float(cg * h * w)
            s = (sum_dy_x * weight).view(n, g, cg).sum(2)                   # (N, G)
            t = (sum_dy * weight).view(n, g, cg).sum(2)
            b_coef = (t * mean - s) * rstd.pow(3) / d
            c_coef = -b_coef * mean - t * rstd / d
            a_coef = rstd_c * weight                                        # (N, C)
            dx = torch.addcmul(c_coef.repeat_interleave(cg, dim=1).view(n, 1, 1, c), xs,
                               b_coef.repeat_interleave(cg, dim=1).view(n, 1, 1, c))
            dx.addcmul_(dy, a_coef.view(n, 1, 1, c))
            dx = dx.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            mean_c = mean.repeat_interleave(cg, dim=1)
            dw = ((sum_dy_x - mean_c * sum_dy) * rstd_c).sum(0)
        if ctx.needs_input_grad[2]:
            db = sum_dy.sum(0)
        return dx, dw, db, None, None


def _float32_cuda_affine(x, weight, bias):
    """What both GPU paths below need: a float32 CUDA input with a float32 scale and bias,
    outside autocast (there PyTorch's casts to float32 apply)."""
    return (x.is_cuda and x.dtype == torch.float32 and weight is not None and bias is not None
            and weight.dtype == bias.dtype == torch.float32
            and not torch.is_autocast_enabled('cuda'))


def _nhwc_path(x, weight, bias):
    return _float32_cuda_affine(x, weight, bias) and channels_last_only(x)


# The statistics kernel of PyTorch's GroupNorm gives each (image, group) row one thread block:
# below this many rows (of at least MIN_ROW elements) the GPU is mostly idle and var_mean,
# which splits a row over blocks, is faster; above it (e.g. the heads' GroupNorm over 512 RoIs
# x 32 groups) PyTorch's kernel is kept.
MAX_ROWS = 1024
MIN_ROW = 4096


def _fast_path(x, weight, bias, num_groups):
    return (_float32_cuda_affine(x, weight, bias) and x.dim() >= 3 and x.is_contiguous()
            and 0 < x.shape[0] * num_groups <= MAX_ROWS
            and x.numel() >= x.shape[0] * num_groups * MIN_ROW)


# the NCHW inputs of _fast_path through the extension's kernel (the module docstring)
FUSED_NCHW = os.environ.get("PYDETECTRON_FUSED_GROUP_NORM", "0") == "1"


def _fused_kernel(x):
    """The extension's GroupNorm (+ residual) (+ ReLU) kernel for this device."""
    return _ext.has_kernel("group_norm_fused", x.device)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, relu=False, residual=None):
    """``torch.nn.functional.group_norm`` (plus ``residual``, then a ReLU with ``relu``), with
    the GPU statistics of the module docstring for a contiguous float32 CUDA input of few
    (image, group) rows, and the extension's fused kernel (``pydetectron.ops.group_norm_fused``:
    the residual and the ReLU in the same pass) for a channels-last one (and for those
    contiguous ones with ``FUSED_NCHW``); both need a scale and a bias and stay outside
    autocast (there PyTorch's casts to float32 apply)."""
    fusable = residual is None or residual.dtype == x.dtype
    if _fast_path(x, weight, bias, num_groups):
        if FUSED_NCHW and fusable and _fused_kernel(x):
            return group_norm_fused(x, weight, bias, num_groups, eps, relu, residual)[0]
        y = _GroupNormFunction.apply(x, weight, bias, num_groups, eps)
    elif _nhwc_path(x, weight, bias):
        if fusable and _fused_kernel(x):
            return group_norm_fused(x, weight, bias, num_groups, eps, relu, residual)[0]
        y = _GroupNormNHWCFunction.apply(x, weight, bias, num_groups, eps)
    else:
        y = nn.functional.group_norm(x, num_groups, weight, bias, eps)
    if residual is not None:
        y = y.add_(residual)                            # y is this function's own output
    return nn.functional.relu(y, inplace=True) if relu else y


def _has_hooks(module):
    return bool(module._forward_hooks or module._forward_pre_hooks
                or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


class GroupNorm2d(nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same parameters, state and results) whose forward is
    ``group_norm`` above; ``forward_relu`` is ``relu(forward(x))`` and ``forward_add_relu``
    ``relu(forward(x) + residual)`` (one pass on the NHWC path)."""

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            return super().forward(x)           # PyTorch's own error message
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def forward_relu(self, x):
        """``relu(self(x))``; the module's hooks, if any, run as for ``self(x)`` (then the ReLU
        is separate)."""
        if x.dim() < 2 or x.shape[1] != self.num_channels or _has_hooks(self):
            return nn.functional.relu(self(x), inplace=True)
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, relu=True)

    def forward_add_relu(self, x, residual):
        """``relu(self(x) + residual)`` (a residual block's end); hooks as ``forward_relu``."""
        if (x.dim() < 2 or x.shape[1] != self.num_channels or _has_hooks(self)
                or residual.shape != x.shape):
            return nn.functional.relu(self(x).add_(residual), inplace=True)
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, relu=True,
                          residual=residual)


def GroupNorm(dim, dim_per_gp=-1, num_groups=32, eps=1e-5):
    """A ``torch.nn.GroupNorm`` (``GroupNorm2d``) over ``dim`` channels with Detectron's group
    count and epsilon.

    Its ``weight`` / ``bias`` are Detectron's ``<prefix>_gn_s`` / ``<prefix>_gn_b`` (init 1 / 0).
    """
    return GroupNorm2d(get_group_gn(dim, dim_per_gp, num_groups), dim, eps=eps, affine=True)
