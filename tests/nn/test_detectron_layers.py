"""AffineChannel2d, GroupNorm group counts and the fixed bilinear upsampling."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pydetectron.nn import AffineChannel2d, BilinearInterpolation2d, GroupNorm, get_group_gn
from pydetectron.nn import bilinear_upsample_filter
from pydetectron.nn.affine import conv_then_norm, freeze_affine_channels


def test_affine_channel_is_scale_and_bias_per_channel():
    m = AffineChannel2d(3)
    m.weight.data = torch.tensor([1., 2., -1.])
    m.bias.data = torch.tensor([0., 1., 0.5])
    x = torch.ones(2, 3, 4, 5)
    y = m(x)
    assert torch.equal(y[:, 0], torch.full((2, 4, 5), 1.))
    assert torch.equal(y[:, 1], torch.full((2, 4, 5), 3.))
    assert torch.equal(y[:, 2], torch.full((2, 4, 5), -0.5))
    # no running statistics: nothing but the scale and the bias
    assert set(m.state_dict()) == {"weight", "bias"}
    m.train()
    assert torch.equal(m(x), y)
    with pytest.raises(ValueError, match="expects"):
        m(torch.ones(2, 4, 4, 5))
    freeze_affine_channels(m)
    assert not any(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("groups,stride,dilation", [(1, 1, 1), (4, 2, 1), (1, 1, 2)])
def test_conv_then_norm_folds_a_frozen_affine_into_the_conv(groups, stride, dilation):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, stride=stride, padding=dilation, dilation=dilation,
                           groups=groups, bias=False).double()
    affine = AffineChannel2d(12).double()
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2.)
        affine.bias.normal_()
    freeze_affine_channels(affine)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64, requires_grad=True)
    folded = conv_then_norm(x, conv, affine)
    (gx_f, gw_f) = torch.autograd.grad(folded.square().sum(), (x, conv.weight))
    ref = affine(conv(x))
    (gx_r, gw_r) = torch.autograd.grad(ref.square().sum(), (x, conv.weight))
    torch.testing.assert_close(folded, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw_f, gw_r, rtol=1e-12, atol=1e-12)


def test_conv_then_norm_caches_the_fold_only_while_its_sources_are_unchanged():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    affine = freeze_affine_channels(AffineChannel2d(5))
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2.)
    x = torch.randn(1, 3, 6, 6)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(conv_then_norm(x, conv, affine), affine(conv(x)))

    check()
    first = affine.__dict__["_folded"][-1]
    check()
    assert affine.__dict__["_folded"][-1] is first          # reused
    with torch.no_grad():
        conv.weight.mul_(-3.)                                # an optimizer step, in place
    check()
    with torch.no_grad():
        affine.weight.add_(1.)                               # a loaded checkpoint, in place
    check()
    conv.load_state_dict({"weight": torch.randn(5, 3, 3, 3)})
    check()
    conv.to(memory_format=torch.channels_last)               # new storage
    check()
    # a training conv is folded afresh each call, so its gradient flows
    y = conv_then_norm(x, conv, affine)
    y.sum().backward()
    assert conv.weight.grad is not None


class _CountCasts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._to_copy:
            self.casts.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train_conv", [False, True])
def test_conv_then_norm_under_autocast_keeps_the_frozen_casts(train_conv):
    """Under bf16 autocast the frozen bias (and a frozen conv's folded weight) are cast once and
    kept: a second call casts nothing of theirs, and the result is autocast's bit for bit."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    conv.weight.requires_grad_(train_conv)
    affine = freeze_affine_channels(AffineChannel2d(6))
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2.)
        affine.bias.normal_()
    x = torch.randn(2, 4, 7, 5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # autocast's own path: the fp32 fold and bias cast at the convolution
        want = F.conv2d(x, conv.weight * affine.weight.view(-1, 1, 1, 1), affine.bias,
                        padding=1)
        conv_then_norm(x, conv, affine)
        counter = _CountCasts()
        with counter:
            got = conv_then_norm(x, conv, affine)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    # a training conv's fold is cast each call (its gradient flows); the bias never again
    assert counter.casts == ([(6, 4, 3, 3)] if train_conv else [])
    with torch.no_grad():
        affine.bias.add_(1.)                                 # a loaded checkpoint, in place
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = conv_then_norm(x, conv, affine)
        want = F.conv2d(x, conv.weight * affine.weight.view(-1, 1, 1, 1), affine.bias,
                        padding=1)
    assert torch.equal(again, want)
    if train_conv:
        again.float().sum().backward()
        assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


def test_conv_then_norm_leaves_training_affines_and_group_norm_alone():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 8, 1, bias=False)
    x = torch.randn(1, 4, 5, 5)
    affine = AffineChannel2d(8)  # trainable: its scale and bias must get gradients
    conv_then_norm(x, conv, affine).sum().backward()
    assert affine.weight.grad is not None and affine.bias.grad is not None
    gn = GroupNorm(8, -1, 2, 1e-5)
    assert torch.equal(conv_then_norm(x, conv, gn), gn(conv(x)))
    frozen = freeze_affine_channels(AffineChannel2d(8))
    seen = []
    frozen.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape))
    conv_then_norm(x, conv, frozen)  # hooked: runs as a module, the hook sees the conv output
    assert seen == [(1, 8, 5, 5)]


def test_group_norm_group_count():
    assert get_group_gn(256, -1, 32) == 32
    assert get_group_gn(256, 16, -1) == 16
    with pytest.raises(ValueError, match="DIM_PER_GP"):
        get_group_gn(256, 16, 32)
    with pytest.raises(ValueError, match="divisible"):
        get_group_gn(100, -1, 32)
    gn = GroupNorm(64, -1, 32, 1e-5)
    assert gn.num_groups == 32 and gn.eps == 1e-5


def test_bilinear_filter_values():
    # FCN bilinear kernel of size 4 (up-scale 2): 1-D taps 0.25, 0.75, 0.75, 0.25
    f = bilinear_upsample_filter(4)
    taps = np.array([0.25, 0.75, 0.75, 0.25], dtype=np.float32)
    np.testing.assert_allclose(f, np.outer(taps, taps))


def test_bilinear_interpolation_doubles_and_interpolates():
    up = BilinearInterpolation2d(2, 2, 2)
    assert up.weight.shape == (2, 2, 4, 4)  # Detectron's blob shape (K, K, 2s, 2s)
    assert torch.all(up.weight[0, 1] == 0)  # channels do not mix
    x = torch.tensor([[[[0., 4.], [8., 12.]]]]).repeat(1, 2, 1, 1)
    y = up(x)
    assert y.shape == (1, 2, 4, 4)
    # Interior samples interpolate linearly between neighbours (1/4, 3/4 weights)
    assert y[0, 0, 1, 1].item() == pytest.approx(0.75 * 0.75 * 0 + 0.75 * 0.25 * 4 + 0.25 * 0.75 * 8
                                                 + 0.25 * 0.25 * 12)
    ref = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1)
    assert torch.equal(y, ref)
    # buffers: saved with the model, never trained
    assert set(dict(up.named_buffers())) == {"weight", "bias"} and not list(up.parameters())
    with pytest.raises(ValueError, match="even"):
        BilinearInterpolation2d(2, 2, 3)


def _group_norm_reference(x, g, w, b, eps):
    """GroupNorm written out: biased variance over each (image, group), then scale and bias."""
    n, c = x.shape[:2]
    xg = x.reshape(n, g, -1)
    mean = xg.mean(2, keepdim=True)
    var = ((xg - mean) ** 2).mean(2, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    view = (1, c) + (1,) * (x.dim() - 2)
    return y * w.reshape(view) + b.reshape(view)


@pytest.mark.parametrize('shape, groups', [((2, 64, 12, 17), 32), ((3, 12, 5, 4, 3), 4),
                                           ((1, 8, 9), 1)])
def test_group_norm_statistics_path_equals_group_norm(shape, groups):
    """The GPU path's function (plain torch ops: it runs on the CPU too) against GroupNorm
    written out, in float64: output and the gradients of input, scale and bias."""
    from pydetectron.nn.group_norm import _GroupNormFunction
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    w = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    y = _GroupNormFunction.apply(x, w, b, groups, 1e-5)
    want = _group_norm_reference(x, groups, w, b, 1e-5)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (x, w, b), g),
                        torch.autograd.grad(want, (x, w, b), g, retain_graph=True)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    w.requires_grad_(False)             # a frozen scale: no gradient asked for it
    dx, db = torch.autograd.grad(_GroupNormFunction.apply(x, w, b, groups, 1e-5), (x, b), g)
    torch.testing.assert_close(dx, torch.autograd.grad(want, x, g)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shape, groups', [((2, 64, 12, 17), 32), ((3, 12, 5, 4), 4),
                                           ((1, 8, 9, 2), 1), ((5, 16, 7, 7), 2)])
def test_group_norm_channels_last_path_equals_group_norm(shape, groups):
    """The channels-last GPU path's function (plain torch ops: it runs on the CPU too) against
    GroupNorm written out, in float64: a channels-last output, and channels-last input
    gradients; the gradients of the scale and bias; a frozen scale asks for none."""
    from pydetectron.nn.group_norm import _GroupNormNHWCFunction
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    y = _GroupNormNHWCFunction.apply(x, w, b, groups, 1e-5)
    want = _group_norm_reference(x, groups, w, b, 1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)                       # (an NCHW gradient: made channels-last)
    grads = torch.autograd.grad(y, (x, w, b), g)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    for got, ref in zip(grads, torch.autograd.grad(want, (x, w, b), g, retain_graph=True)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # the ReLU after a GroupNorm runs in place on its output (as the GN bodies and heads do)
    relu_grads = torch.autograd.grad(
        torch.relu_(_GroupNormNHWCFunction.apply(x, w, b, groups, 1e-5)), (x, w, b), g)
    for got, ref in zip(relu_grads, torch.autograd.grad(torch.relu(want), (x, w, b), g,
                                                        retain_graph=True)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    w.requires_grad_(False)
    dx, db = torch.autograd.grad(_GroupNormNHWCFunction.apply(x, w, b, groups, 1e-5), (x, b), g)
    torch.testing.assert_close(dx, torch.autograd.grad(want, x, g)[0], rtol=1e-10, atol=1e-10)


def test_group_norm_takes_the_channels_last_path_for_channels_last_cuda_inputs(monkeypatch):
    from pydetectron.nn import group_norm as gn_module
    gn = GroupNorm(64, -1, 32, 1e-5)
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda t: True))
    nhwc = gn_module._nhwc_path
    x = torch.empty(512, 64, 14, 14).to(memory_format=torch.channels_last)   # RoIs too
    assert nhwc(x, gn.weight, gn.bias)
    assert not nhwc(torch.empty(512, 64, 14, 14), gn.weight, gn.bias)        # NCHW
    assert not nhwc(torch.empty(2, 64, 1, 1).to(memory_format=torch.channels_last),
                    gn.weight, gn.bias)                   # both layouts at once: NCHW's paths
    assert not nhwc(x.double(), gn.weight, gn.bias)
    assert not nhwc(x, None, gn.bias) and not nhwc(x, gn.weight, None)
    assert not nhwc(torch.empty(2, 64, 9), gn.weight, gn.bias)
    monkeypatch.setattr(torch, 'is_autocast_enabled', lambda device=None: device == 'cuda')
    assert not nhwc(x, gn.weight, gn.bias)


def test_group_norm_takes_the_statistics_path_only_where_it_pays(monkeypatch):
    from pydetectron.nn import group_norm as gn_module
    gn = GroupNorm(64, -1, 32, 1e-5)
    assert isinstance(gn, torch.nn.GroupNorm) and set(gn.state_dict()) == {'weight', 'bias'}
    x = torch.randn(2, 64, 16, 16)
    calls = []
    monkeypatch.setattr(gn_module._GroupNormFunction, 'apply',
                        lambda *a: calls.append(a) or F.group_norm(a[0], a[3], a[1], a[2], a[4]))
    assert torch.equal(gn(x), F.group_norm(x, 32, gn.weight, gn.bias, 1e-5))
    assert calls == []                                  # the CPU: PyTorch's GroupNorm
    fast = gn_module._fast_path
    big = torch.empty(2, 64, 64, 64)                    # 64 rows of 8192
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda t: True))
    assert fast(big, gn.weight, gn.bias, 32)
    assert not fast(big, None, gn.bias, 32) and not fast(big, gn.weight, None, 32)
    assert not fast(big.to(memory_format=torch.channels_last), gn.weight, gn.bias, 32)
    assert not fast(big.double(), gn.weight, gn.bias, 32)
    assert not fast(torch.empty(512, 64, 14, 14), gn.weight, gn.bias, 32)   # RoIs: many rows
    assert not fast(torch.empty(2, 64, 8, 8), gn.weight, gn.bias, 32)       # short rows
    monkeypatch.setattr(torch, 'is_autocast_enabled', lambda device=None: device == 'cuda')
    assert not fast(big, gn.weight, gn.bias, 32)        # autocast: PyTorch's float32 casts


def _group_norm_with_random_affine(channels, groups, device='cpu'):
    """A GroupNorm over ``channels`` in ``groups`` groups whose scales (0.5-1.5) and biases
    (-0.5-0.5) are drawn after ``torch.manual_seed(0)``: the tests' inputs come from the same
    stream after it."""
    torch.manual_seed(0)
    gn = GroupNorm(channels, -1, groups, 1e-5).to(device)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    return gn


def _assert_float64_group_norm(gn, x, y, g, grads):
    """``y = gn(x)`` and its gradients (x, scale, bias) for ``g``, against PyTorch's GroupNorm
    of the same tensors in float64."""
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, gn.weight, gn.bias))
    want = F.group_norm(x64, 32, w64, b64, 1e-5)
    want_grads = torch.autograd.grad(want, (x64, w64, b64), g.double())
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-5)
    for got, ref, tol in zip(grads, want_grads, (2e-5, 5e-2, 5e-2)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_group_norm_equals_pytorchs():
    """On the GPU, at an FPN level's size for 2 images: output and gradients against PyTorch's
    GroupNorm (float32; float64 on the CPU as the reference)."""
    gn = _group_norm_with_random_affine(256, 32, 'cuda')
    x = (torch.randn(2, 256, 100, 168, device='cuda') * 2 + 0.5).requires_grad_()
    y = gn(x)
    assert y.grad_fn is not None and 'GroupNormFunction' in type(y.grad_fn).__name__
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, gn.weight, gn.bias), g)
    _assert_float64_group_norm(gn, x, y, g, grads)
    theirs = F.group_norm(x, 32, gn.weight, gn.bias, 1e-5)      # PyTorch's, in float32
    torch.testing.assert_close(y, theirs, rtol=0, atol=2e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('shape', [(2, 256, 100, 168), (512, 256, 14, 14)])
def test_cuda_channels_last_group_norm_equals_pytorchs(shape):
    """A channels-last input on the GPU (an FPN level of 2 images; a mask head's RoIs): output
    and gradients, kept channels-last, against PyTorch's GroupNorm in float64."""
    gn = _group_norm_with_random_affine(256, 32, 'cuda')
    x = (torch.randn(shape, device='cuda') * 2 + 0.5).to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = gn(x)
    # the extension's fused kernel (pydetectron.ops.group_norm_fused)
    assert 'group_norm_fused' in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, gn.weight, gn.bias), g)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    _assert_float64_group_norm(gn, x, y, g, grads)
    # with its ReLU in the same pass: the gradient passes where the output is positive
    y = gn.forward_relu(x)
    assert 'group_norm_fused' in type(y.grad_fn).__name__
    grads = torch.autograd.grad(y, (x, gn.weight, gn.bias), g)
    plain = gn(x)
    assert torch.equal(y, plain.clamp_min(0))
    _assert_float64_group_norm(gn, x, plain, g * (plain > 0), grads)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_fused_nchw_group_norm_equals_pytorchs(monkeypatch):
    """FUSED_NCHW on the GPU (a res2 map of 2 images): the extension's kernel, NCHW in and out,
    with its ReLU and a residual block's sum, against PyTorch's GroupNorm in float64."""
    from pydetectron.nn import group_norm as gn_module
    monkeypatch.setattr(gn_module, 'FUSED_NCHW', True)
    gn = _group_norm_with_random_affine(256, 32, 'cuda')
    x = (torch.randn(2, 256, 100, 168, device='cuda') * 2 + 0.5).requires_grad_()
    g = torch.randn_like(x)
    y = gn(x)
    assert 'group_norm_fused' in type(y.grad_fn).__name__ and y.is_contiguous()
    grads = torch.autograd.grad(y, (x, gn.weight, gn.bias), g)
    assert grads[0].is_contiguous()
    _assert_float64_group_norm(gn, x, y, g, grads)
    r = torch.randn_like(x).requires_grad_()
    y = gn.forward_add_relu(x, r)
    assert 'group_norm_fused' in type(y.grad_fn).__name__
    plain = gn(x)
    assert torch.equal(y, (plain + r).clamp_min(0))
    grads = torch.autograd.grad(y, (x, gn.weight, gn.bias, r), g)
    mask = (y > 0).to(g.dtype)
    assert torch.equal(grads[3], g * mask)
    _assert_float64_group_norm(gn, x, plain, g * mask, grads[:3])


@pytest.mark.parametrize('channels_last', [False, True])
def test_group_norm_forward_relu_equals_relu_of_forward(channels_last, monkeypatch):
    """``GroupNorm2d.forward_relu`` is ``relu(gn(x))`` (on the CPU: PyTorch's GroupNorm, then the
    ReLU), values and gradients; a module with forward hooks still runs them."""
    gn = _group_norm_with_random_affine(32, 8)
    x = torch.randn(2, 32, 6, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = gn.forward_relu(x)
    want = F.relu(F.group_norm(x, 8, gn.weight, gn.bias, 1e-5))
    torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
    g = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (x, gn.weight, gn.bias), g),
                        torch.autograd.grad(want, (x, gn.weight, gn.bias), g)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # relu(gn(x) + residual): a residual block's end
    r = torch.randn(2, 32, 6, 7, requires_grad=True)
    y = gn.forward_add_relu(x, r)
    want = F.relu(F.group_norm(x, 8, gn.weight, gn.bias, 1e-5) + r)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
    for got, ref in zip(torch.autograd.grad(y, (x, gn.weight, gn.bias, r), g),
                        torch.autograd.grad(want, (x, gn.weight, gn.bias, r), g)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    seen = []
    gn.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    y = gn.forward_relu(x)
    assert len(seen) == 1 and (seen[0] < 0).any() and torch.equal(y, seen[0].clamp_min(0))
    y = gn.forward_add_relu(x, r)
    assert len(seen) == 2 and torch.equal(y, (seen[1] + r).clamp_min(0))


def test_group_norm_fuses_the_relu_on_the_channels_last_cuda_path(monkeypatch):
    """On the NHWC path with the extension's kernel, ``group_norm(..., relu=True)`` is one call
    of ``group_norm_fused`` with ``relu=True`` (no separate ReLU); without the kernel, the torch
    function then a ReLU."""
    from pydetectron.nn import group_norm as gn_module
    gn = GroupNorm(16, -1, 4, 1e-5)
    x = torch.randn(2, 16, 5, 5).to(memory_format=torch.channels_last)
    calls = []

    def fake_op(x, w, b, groups, eps, relu, residual=None):
        calls.append((groups, eps, relu))
        y = F.group_norm(x, groups, w, b, eps)
        if residual is not None:
            calls[-1] += (residual,)
            y = y + residual
        return (y.clamp_min(0) if relu else y), None, None

    monkeypatch.setattr(gn_module, '_nhwc_path', lambda x, w, b: True)
    monkeypatch.setattr(gn_module, 'group_norm_fused', fake_op)
    monkeypatch.setattr(gn_module, '_fused_kernel', lambda x: True)
    y = gn.forward_relu(x)
    assert calls == [(4, 1e-5, True)] and (y >= 0).all()
    gn(x)
    assert calls[-1] == (4, 1e-5, False)
    r = torch.randn(2, 16, 5, 5)
    gn.forward_add_relu(x, r)
    assert calls[-1][:3] == (4, 1e-5, True) and calls[-1][3] is r
    calls.clear()
    monkeypatch.setattr(gn_module, '_fused_kernel', lambda x: False)
    y = gn.forward_relu(x)
    assert calls == []
    # the torch ops' NHWC function, then an in-place ReLU
    assert 'NHWC' in type(y.grad_fn.next_functions[0][0]).__name__
    torch.testing.assert_close(y, F.relu(F.group_norm(x, 4, gn.weight, gn.bias, 1e-5)),
                               rtol=0, atol=1e-6)


def test_group_norm_fuses_nchw_inputs_only_when_asked(monkeypatch):
    """A contiguous input of the statistics path goes to the extension's kernel (ReLU and
    residual in its pass) with FUSED_NCHW, to the var_mean function without; a channels-last
    one goes to the kernel either way."""
    from pydetectron.nn import group_norm as gn_module
    gn = GroupNorm(16, -1, 4, 1e-5)
    x = torch.randn(2, 16, 5, 5)
    r = torch.randn(2, 16, 5, 5)
    calls, stats = [], []

    def fake_op(x, w, b, groups, eps, relu, residual=None):
        calls.append((x.is_contiguous(), relu, residual is not None))
        y = F.group_norm(x, groups, w, b, eps) + (0 if residual is None else residual)
        return (y.clamp_min(0) if relu else y), None, None

    monkeypatch.setattr(gn_module, '_fast_path', lambda x, w, b, g: x.is_contiguous())
    monkeypatch.setattr(gn_module, '_nhwc_path', lambda x, w, b: not x.is_contiguous())
    monkeypatch.setattr(gn_module, 'group_norm_fused', fake_op)
    monkeypatch.setattr(gn_module, '_fused_kernel', lambda x: True)
    monkeypatch.setattr(gn_module._GroupNormFunction, 'apply',
                        lambda *a: stats.append(a) or F.group_norm(a[0], a[3], a[1], a[2], a[4]))
    want = F.relu(F.group_norm(x, 4, gn.weight, gn.bias, 1e-5) + r)
    monkeypatch.setattr(gn_module, 'FUSED_NCHW', False)
    torch.testing.assert_close(gn.forward_add_relu(x, r), want, rtol=0, atol=1e-6)
    assert calls == [] and len(stats) == 1
    monkeypatch.setattr(gn_module, 'FUSED_NCHW', True)
    torch.testing.assert_close(gn.forward_add_relu(x, r), want, rtol=0, atol=1e-6)
    gn.forward_relu(x)
    assert calls == [(True, True, True), (True, True, False)] and len(stats) == 1
    gn.forward_relu(x.to(memory_format=torch.channels_last))
    assert calls[-1] == (False, True, False)
    # a residual of another dtype: the unfused path
    gn.forward_add_relu(x, r.double())
    assert len(calls) == 3 and len(stats) == 2
