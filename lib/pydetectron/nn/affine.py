"""AffineChannel2d: Detectron's stand-in for batch norm with frozen statistics.

Detectron never updates BN statistics (its minibatches are 1-2 images per GPU), so every BN of an
ImageNet backbone is folded into a per-channel scale and bias (the ``*_bn_s`` / ``*_bn_b`` blobs)
and applied by Caffe2's AffineChannel op: y = x * scale + bias. There are no running statistics and
nothing differs between training and inference.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pydetectron.nn.group_norm import GroupNorm2d

__all__ = ["AffineChannel2d", "freeze_affine_channels", "conv_then_norm"]


class AffineChannel2d(nn.Module):
    """y[n, c, h, w] = x[n, c, h, w] * weight[c] + bias[c]

    (weight is Detectron's ``<name>_s`` blob, bias its ``<name>_b``).
    """

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))  # Caffe2 init: ConstantFill 1
        self.bias = nn.Parameter(torch.zeros(num_features))  # Caffe2 init: ConstantFill 0

    def forward(self, x):
        # x: (N, C, H, W)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError("AffineChannel2d(%d) expects (N, %d, H, W) input, got %s"
                             % (self.num_features, self.num_features, tuple(x.shape)))
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self):
        return str(self.num_features)


@torch.no_grad()
def init_affine_channels_from_data(module, *inputs, eps=1e-5):
    """Data-dependent start of the AffineChannel2d layers of ``module`` (frozen BN without
    ImageNet weights): run ``module(*inputs)`` once; each AffineChannel2d, when the pass reaches
    it and before it runs, takes ``weight = 1 / sqrt(var + eps)`` and ``bias = -mean * weight``
    of its input's channels over (N, H, W) -- what BatchNorm in training mode would compute on
    that batch -- so every later layer of the same pass already sees normalised activations.
    Left at 1 and 0, the affines pass the random convolutions' growth on: a random R-50 body's
    activations grow by orders of magnitude and the losses reach inf / NaN in a few steps.
    Returns the number of layers set (a layer met twice keeps its first statistics)."""
    done = set()

    def start(m, args):
        if m in done:
            return
        done.add(m)
        x = args[0].detach().float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        inv = torch.rsqrt(var + eps)
        m.weight.copy_(inv.to(m.weight.dtype))
        m.bias.copy_((-mean * inv).to(m.bias.dtype))

    handles = [m.register_forward_pre_hook(start) for m in module.modules()
               if isinstance(m, AffineChannel2d)]
    try:
        module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return len(done)


def freeze_affine_channels(module):
    """Stop training every AffineChannel2d under ``module`` (frozen BN stays frozen)."""
    for m in module.modules():
        if isinstance(m, AffineChannel2d):
            for p in m.parameters():
                p.requires_grad = False
    return module


def conv_then_norm(x, conv, norm):
    """``norm(conv(x))`` for a bias-free ``nn.Conv2d`` followed by its normalisation.

    A frozen AffineChannel2d (scale and bias not training, as every one of Detectron's backbones)
    is folded into the convolution: conv(x) * s + b == conv_{W * s}(x) + b, one convolution with
    a bias instead of a convolution and two passes over its output. Equal up to float rounding;
    gradients reach ``conv.weight`` (through the product) and ``x`` as before. Any other
    normalisation (GroupNorm, a training AffineChannel2d), or a conv or norm with forward hooks,
    runs as ``norm(conv(x))``.
    """
    if (isinstance(norm, AffineChannel2d) and conv.bias is None
            and not (norm.weight.requires_grad or norm.bias.requires_grad)
            and isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
            and not _has_hooks(conv) and not _has_hooks(norm)):
        # Under autocast the convolution casts its weight and bias at every call (two operators
        # a layer: a step's host time at small batches); the frozen ones are kept cast.
        dtype = _autocast_dtype(x)
        compiling = torch.compiler.is_compiling()
        if (conv.weight.requires_grad and torch.is_grad_enabled()) or compiling:
            # (a compiled graph folds the weight itself; a cached tensor made inside a CUDA
            # graph would be overwritten by the next replay)
            weight = conv.weight * norm.weight.view(-1, 1, 1, 1)
        else:
            weight = _cached_fold(conv.weight, norm, dtype)
        bias = norm.bias if compiling else _cached_cast(norm, dtype)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return norm(conv(x))


def conv_norm_relu(x, conv, norm):
    """``relu(norm(conv(x)))`` (in place): ``conv_then_norm`` then a ReLU, except that a
    GroupNorm2d applies its ReLU in its own pass where it can (``GroupNorm2d.forward_relu``;
    the conv runs as a module either way, its hooks included)."""
    if isinstance(norm, GroupNorm2d):
        return norm.forward_relu(conv(x))
    return F.relu(conv_then_norm(x, conv, norm), inplace=True)


def conv_norm_add_relu(x, conv, norm, residual):
    """``relu(norm(conv(x)) + residual)`` (a residual block's end): ``conv_then_norm``, the sum
    and the ReLU in place, except that a GroupNorm2d adds and applies its ReLU in its own pass
    where it can (``GroupNorm2d.forward_add_relu``)."""
    if isinstance(norm, GroupNorm2d):
        return norm.forward_add_relu(conv(x), residual)
    return F.relu(conv_then_norm(x, conv, norm).add_(residual), inplace=True)


def _has_hooks(module):
    # A module with forward hooks is called as a module, so that its hooks see its input and
    # output (statistics collection, feature extraction).
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _autocast_dtype(x):
    """The dtype autocast runs a convolution on ``x``'s device in, or None outside autocast."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _kept(owner, key, sources, make):
    """``make()``, computed from the tensors ``sources``, kept on ``owner`` under ``key`` until one
    of them changes. The cache holds detached aliases of the sources: they share the sources'
    version counters (an optimizer step or a loaded checkpoint bumps them) and keep the source
    storages alive, so an equal data pointer means the same storage (a move to another device or
    memory format gives new storage)."""
    stamp = tuple((t.data_ptr(), t._version, t.stride(), t.dtype) for t in sources)
    cached = owner.__dict__.get(key)
    if cached is not None and cached[1] == stamp:
        return cached[-1]
    with torch.no_grad():
        value = make()
    owner.__dict__[key] = (tuple(t.detach() for t in sources), stamp, value)
    return value


def _cached_fold(conv_weight, norm, dtype=None):
    """W * s for a conv whose weight does not train here (frozen stages, inference), kept on
    ``norm`` until either tensor changes; with ``dtype`` (autocast's), the product computed in the
    weight's dtype and then cast, as autocast would cast it."""
    def fold():
        folded = conv_weight * norm.weight.view(-1, 1, 1, 1)
        return folded if dtype is None else folded.to(dtype)
    key = "_folded" if dtype is None else "_folded_%s" % dtype
    return _kept(norm, key, (conv_weight, norm.weight), fold)


def _cached_cast(norm, dtype):
    """``norm.bias`` (frozen) in ``dtype``, cast once and kept until the bias changes."""
    bias = norm.bias
    if dtype is None or bias.dtype == dtype:
        return bias
    return _kept(norm, "_bias_%s" % dtype, (bias,), lambda: bias.to(dtype))
