"""pydetectron.ops.group_norm_fused (and group_norm_nhwc, its channels-last-only form): GroupNorm
(+ residual) (+ ReLU) of an NCHW or a channels-last map, against PyTorch's GroupNorm and ReLU
(values, statistics, gradients), in both layouts, on the CPU and, marked, on CUDA."""
import pytest
import torch
import torch.nn.functional as F

from ops_test_utils import cuda_kernels_available, needs_ext
from pydetectron.ops import group_norm_fused, group_norm_nhwc

pytestmark = needs_ext


LAYOUTS = ["nhwc", "nchw"]
FORMATS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}


def _input(shape, dtype, seed, device="cpu", shift=1.5, scale=2.0, layout="nhwc"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift
    return x.to(dtype).to(device).contiguous(memory_format=FORMATS[layout])


def _params(c, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(c, generator=g, dtype=torch.float64).to(dtype).to(device)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype).to(device)
    return w, b


def _reference(x, w, b, groups, eps, relu, residual=None):
    y = F.group_norm(x, groups, w, b, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _masked(grad, y, relu):
    return grad * (y > 0) if relu else grad


def _statistics(x, groups, eps):
    """Per (image, group) mean and 1 / sqrt(biased var + eps), in float64 from the NCHW view."""
    v = x.double().contiguous().view(x.size(0), groups, -1)
    mean = v.mean(dim=2)
    var = ((v - mean.unsqueeze(2)) ** 2).mean(dim=2)
    return mean, (var + eps).rsqrt()


def _grads(y, inputs, grad):
    return torch.autograd.grad(y, inputs, grad)


def _is_nhwc(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _in_layout(t, layout):
    """t laid out as `layout` (a map of one channel or one pixel is both)."""
    if t[0, 0].numel() == 1 or t.size(1) == 1:
        return t.is_contiguous() or _is_nhwc(t)
    return _is_nhwc(t) if layout == "nhwc" else t.is_contiguous()


# (N, C, H, W), groups: the stem's 64 channels in 32 groups, DIM_PER_GP-style groups of 16,
# the heads' many RoIs of few pixels, one group, one pixel
SHAPES = [((2, 64, 9, 13), 32), ((3, 48, 5, 7), 3), ((17, 32, 3, 3), 8), ((2, 8, 4, 5), 1),
          ((4, 16, 1, 1), 4)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,groups", SHAPES)
def test_cpu_equals_pytorchs_group_norm_and_relu(shape, groups, relu, residual, layout):
    x = _input(shape, torch.float32, seed=3, layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(shape[1], torch.float32, seed=3))
    inputs = (x, w, b)
    r = None
    if residual:                # a shortcut of the other layout: brought to x's by the wrapper
        other = "nchw" if layout == "nhwc" else "nhwc"
        r = _input(shape, torch.float32, seed=2, shift=-0.5, layout=other).requires_grad_(True)
        inputs = (x, w, b, r)
    y, mean, rstd = group_norm_fused(x, w, b, groups, 1e-5, relu, r)
    ref = _reference(x, w, b, groups, 1e-5, relu, r)
    assert _in_layout(y, layout)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    m_ref, r_ref = _statistics(x.detach(), groups, 1e-5)
    torch.testing.assert_close(mean.double(), m_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), r_ref, rtol=1e-6, atol=1e-6)
    grad = _input(shape, torch.float32, seed=4, shift=0.0, scale=1.0)
    # PyTorch's gradients through the ReLU's mask of our output (an element within rounding of
    # 0 may fall either side)
    pre = _reference(x, w, b, groups, 1e-5, False, r)
    got = _grads(y, inputs, grad)
    assert _in_layout(got[0], layout)
    for a, want in zip(got, _grads(pre, inputs, _masked(grad, y, relu))):
        torch.testing.assert_close(a, want, rtol=1e-5, atol=2e-5)
    if relu:
        assert (y >= 0).all() and (y == 0).any() and (y > 0).any()


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_the_two_layouts_give_the_same_bits(shape, groups):
    """The NCHW and channels-last loops read the same values in the same order per element and
    sum the statistics in double: the same outputs and gradients bit for bit."""
    outs = []
    for layout in LAYOUTS:
        x = _input(shape, torch.float32, seed=21, layout=layout).requires_grad_(True)
        w, b = (t.requires_grad_(True) for t in _params(shape[1], torch.float32, seed=21))
        r = _input(shape, torch.float32, seed=22, layout=layout)
        y, mean, rstd = group_norm_fused(x, w, b, groups, 1e-5, True, r)
        grad = _input(shape, torch.float32, seed=23, shift=0.0, layout=layout)
        outs.append((y, mean, rstd) + _grads(y, (x, w, b), grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [False, True])
def test_float64_gradcheck(relu, layout):
    x = _input((2, 8, 3, 4), torch.float64, seed=5, layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(8, torch.float64, seed=5))
    assert torch.autograd.gradcheck(lambda *a: group_norm_fused(*a, 4, 1e-5, relu)[0], (x, w, b))
    y = group_norm_fused(x, w, b, 4, 1e-5, relu)[0]
    torch.testing.assert_close(y, _reference(x, w, b, 4, 1e-5, relu), rtol=1e-12, atol=1e-12)
    r = _input((2, 8, 3, 4), torch.float64, seed=6, shift=-1.0, layout=layout)
    assert torch.autograd.gradcheck(
        lambda x, w, b, r: group_norm_fused(x, w, b, 4, 1e-5, relu, r)[0],
        (x, w, b, r.requires_grad_(True)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_relu_passes_the_gradient_where_the_output_is_positive(layout):
    """With relu the backward is the plain GroupNorm backward of the gradient zeroed where the
    output is 0: the same bits, so the mask is the forward's own."""
    x = _input((3, 32, 6, 5), torch.float32, seed=6, layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(32, torch.float32, seed=6))
    grad = _input((3, 32, 6, 5), torch.float32, seed=7, shift=0.0, scale=1.0)
    y = group_norm_fused(x, w, b, 8, 1e-5, True)[0]
    fused = _grads(y, (x, w, b), grad)
    plain = group_norm_fused(x, w, b, 8, 1e-5, False)[0]
    assert torch.equal(y, plain.clamp_min(0))
    masked = _grads(plain, (x, w, b), grad * (plain > 0))
    for a, r in zip(fused, masked):
        assert torch.equal(a, r)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameters_without_gradient_and_an_empty_batch(layout):
    x = _input((2, 16, 3, 3), torch.float32, seed=8, layout=layout).requires_grad_(True)
    w, b = _params(16, torch.float32, seed=8)
    y = group_norm_fused(x, w, b, 4)[0]
    (gx,) = torch.autograd.grad(y.sum(), (x,))
    (rx,) = torch.autograd.grad(F.group_norm(x, 4, w, b).sum(), (x,))
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    empty = _input((0, 16, 7, 7), torch.float32, seed=8, layout=layout).requires_grad_(True)
    y, mean, rstd = group_norm_fused(empty, w, b, 4, 1e-5, True)
    assert y.shape == (0, 16, 7, 7) and mean.shape == rstd.shape == (0, 4)


@pytest.mark.parametrize("bad,error,words", [
    (lambda x, w, b: (x.contiguous(), w, b, 4), ValueError, "channels-last"),
    (lambda x, w, b: (x.half(), w, b, 4), TypeError, "float32 or float64"),
    (lambda x, w, b: (x[:, :, 0], w, b, 4), ValueError, "4-D"),
    (lambda x, w, b: (x, w, b, 5), ValueError, "num_groups=5"),
    (lambda x, w, b: (x, w, b, 0), ValueError, "num_groups=0"),
    (lambda x, w, b: (x, w[:8], b, 4), ValueError, "`weight` must have shape (16,)"),
    (lambda x, w, b: (x, w, b.double(), 4), TypeError, "`bias` must be torch.float32"),
    (lambda x, w, b: (x.long(), w, b, 4), TypeError, "`x` must be float"),
    (lambda x, w, b: (x, w, b, 4, 1e-5, True, x[:1]), ValueError, "`residual` must have the shape"),
    (lambda x, w, b: (x, w, b, 4, 1e-5, True, x.double()), TypeError,
     "`residual` must be torch.float32"),
])
def test_bad_arguments_name_the_argument(bad, error, words):
    x = _input((2, 16, 3, 3), torch.float32, seed=9)
    w, b = _params(16, torch.float32, seed=9)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        group_norm_nhwc(*bad(x, w, b))
    if words != "channels-last":                # group_norm_fused takes NCHW too
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            group_norm_fused(*bad(x, w, b))


def test_group_norm_fused_refuses_other_strides():
    x = _input((2, 16, 3, 4), torch.float32, seed=9)
    w, b = _params(16, torch.float32, seed=9)
    for bad in (x.transpose(2, 3), x.contiguous()[:, :, :, ::2], x.permute(0, 1, 3, 2)):
        with pytest.raises(ValueError, match=r"group_norm_fused: `x` must be contiguous \(NCHW\) "
                                             r"or channels-last"):
            group_norm_fused(bad, w, b, 4)
        with pytest.raises(RuntimeError, match="must be contiguous"):
            torch.ops.pydetectron.group_norm_fused(bad, w, b, 4, 1e-5, False)


def test_the_cpp_checks_raise_too():
    x = _input((2, 16, 3, 3), torch.float32, seed=9)
    w, b = _params(16, torch.float32, seed=9)
    op = torch.ops.pydetectron.group_norm_fused
    with pytest.raises(RuntimeError, match="num_groups=3"):
        op(x, w, b, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"`residual` must be laid out as `x` \(channels-last"):
        op(x, w, b, 4, 1e-5, False, x.contiguous())
    with pytest.raises(RuntimeError, match=r"`residual` must be laid out as `x` \(contiguous"):
        op(x.contiguous(), w, b, 4, 1e-5, False, x)
    y, mean, rstd = op(x, w, b, 4, 1e-5, False)
    with pytest.raises(RuntimeError, match="`mean` must have shape"):
        torch.ops.pydetectron._group_norm_fused_backward(y, x, w, b, mean[:1], rstd, 4, False)
    with pytest.raises(RuntimeError, match=r"`grad` must be Float of shape \[2, 16, 3, 3\]"):
        torch.ops.pydetectron._group_norm_fused_backward(y[:1], x, w, b, mean, rstd, 4, False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_and_torch_compile(layout):
    x = _input((2, 16, 3, 5), torch.float32, seed=10, layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(16, torch.float32, seed=10))
    r = _input((2, 16, 3, 5), torch.float32, seed=11, layout=layout).requires_grad_(True)
    for relu in (False, True):
        torch.library.opcheck(torch.ops.pydetectron.group_norm_fused.default,
                              (x, w, b, 4, 1e-5, relu))
        torch.library.opcheck(torch.ops.pydetectron.group_norm_fused.default,
                              (x, w, b, 4, 1e-5, relu, r))

    def f(x, w, b):
        return group_norm_fused(x, w, b, 4, 1e-5, True)[0].square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    g_c = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    g_e = torch.autograd.grad(f(x, w, b), (x, w, b))
    for a, r in zip(g_c, g_e):
        torch.testing.assert_close(a, r)
    assert _in_layout(g_c[0], layout)


# -------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")

# the GroupNorm config's maps at 2 images of 800 x 1216 (stem, res2, res5), the heads' RoIs,
# odd sizes and channel counts that are no multiple of the 32-channel tiles, nor of the 4-wide
# packs of the elementwise passes (18; in NCHW, pixel counts that are no multiple of 4: 153,
# 333, 35)
CUDA_SHAPES = [((2, 64, 400, 608), 32), ((2, 256, 200, 304), 32), ((2, 2048, 25, 38), 32),
               ((1024, 256, 7, 7), 32), ((3, 48, 17, 9), 3), ((5, 40, 1, 1), 8),
               ((1, 96, 333, 1), 32), ((2, 18, 7, 5), 3)]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shape,groups", CUDA_SHAPES)
def test_cuda_equals_pytorchs_group_norm_and_relu(shape, groups, relu, residual, layout):
    x = _input(shape, torch.float32, seed=11, device="cuda", layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(shape[1], torch.float32, 11, "cuda"))
    r = None
    if residual:
        r = _input(shape, torch.float32, seed=10, device="cuda", shift=-0.5,
                   layout=layout).requires_grad_(True)
    y, mean, rstd = group_norm_fused(x, w, b, groups, 1e-5, relu, r)
    assert _in_layout(y, layout)
    ref = _reference(x, w, b, groups, 1e-5, relu, r)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)
    m_ref, r_ref = _statistics(x.detach(), groups, 1e-5)
    torch.testing.assert_close(mean.double(), m_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rstd.double(), r_ref, rtol=1e-5, atol=1e-6)
    grad = _input(shape, torch.float32, seed=12, device="cuda", shift=0.0, scale=1.0,
                  layout=layout)
    inputs = (x, w, b) if r is None else (x, w, b, r)
    got = _grads(y, inputs, grad)
    # PyTorch's gradients through the ReLU's mask of our output (an element within rounding of
    # 0 may fall either side of it)
    pre = _reference(x, w, b, groups, 1e-5, False, r)
    want = _grads(pre, inputs, _masked(grad, y, relu))
    assert _in_layout(got[0], layout)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    if r is not None:
        assert torch.equal(got[3], want[3])         # relu's own mask of the gradient
    # dweight and dbias are sums over every pixel of every image: compared relative to their
    # largest value
    for a, m in zip(got[1:3], want[1:3]):
        torch.testing.assert_close(a, m, rtol=1e-4, atol=1e-4 * float(m.abs().max()) + 1e-5)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_relu_mask_float64_and_opcheck(layout):
    x = _input((3, 64, 11, 13), torch.float32, seed=13, device="cuda",
               layout=layout).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _params(64, torch.float32, 13, "cuda"))
    grad = _input((3, 64, 11, 13), torch.float32, seed=14, device="cuda", shift=0.0, scale=1.0)
    y = group_norm_fused(x, w, b, 32, 1e-5, True)[0]
    plain = group_norm_fused(x, w, b, 32, 1e-5, False)[0]
    assert torch.equal(y, plain.clamp_min(0))
    for a, r in zip(_grads(y, (x, w, b), grad), _grads(plain, (x, w, b), grad * (plain > 0))):
        assert torch.equal(a, r)
    xd = _input((2, 8, 5, 3), torch.float64, seed=15, device="cuda",
                layout=layout).requires_grad_(True)
    wd, bd = (t.requires_grad_(True) for t in _params(8, torch.float64, 15, "cuda"))
    assert torch.autograd.gradcheck(lambda *a: group_norm_fused(*a, 4, 1e-5, True)[0],
                                    (xd, wd, bd))
    torch.library.opcheck(torch.ops.pydetectron.group_norm_fused.default,
                          (x, w, b, 32, 1e-5, True))
    # the CPU reference gives the same values
    yc, mc, rc = group_norm_fused(x.detach().cpu(), w.detach().cpu(), b.detach().cpu(), 32,
                                  1e-5, True)
    torch.testing.assert_close(y.detach().cpu(), yc, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_unaligned_tensors_take_the_one_element_path(layout):
    """Tensors whose data does not start on a 16-byte boundary (a view one element into its
    storage) are read one element at a time, with the same results."""
    shape = (2, 32, 9, 12)
    x = _input(shape, torch.float32, seed=16, device="cuda", layout=layout)
    w, b = _params(32, torch.float32, 16, "cuda")
    storage = torch.empty(x.numel() + 1, device="cuda")
    odd = storage[1:].as_strided(shape, x.stride())
    odd.copy_(x)
    assert odd.data_ptr() % 16 != 0 and _in_layout(odd, layout)
    odd.requires_grad_(True)
    xr = x.clone(memory_format=FORMATS[layout]).requires_grad_(True)
    grad = _input(shape, torch.float32, seed=17, device="cuda", shift=0.0, scale=1.0,
                  layout=layout)
    y_odd = group_norm_fused(odd, w, b, 8, 1e-5, True, odd.detach())[0]
    y = group_norm_fused(xr, w, b, 8, 1e-5, True, x)[0]
    assert torch.equal(y_odd, y)
    (g_odd,) = torch.autograd.grad(y_odd, odd, grad)
    (g,) = torch.autograd.grad(y, xr, grad)
    torch.testing.assert_close(g_odd, g, rtol=1e-6, atol=1e-6)
