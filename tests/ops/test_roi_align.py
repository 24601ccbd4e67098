"""RoIAlign against a float64 pure-PyTorch reference of Caffe2's rules, by hand, and on CUDA."""
import math

import pytest
import torch

from pydetectron.ops import RoIAlign, roi_align
from ops_test_utils import cuda_kernels_available, needs_ext, random_rois

pytestmark = needs_ext


# ---------------------------------------------------------------------------------------------
# Reference. RoIAlign is separable: out[c, p, q] = sum_{h, w} Wy[p, h] Wx[q, w] x[c, h, w] / count,
# where Wy[p, :] sums, over the bin's samples along y, the bilinear weights each sample puts on
# the rows (zero for a sample outside [-1, H]); Wx likewise. Written as matrix products.
# ---------------------------------------------------------------------------------------------
def _axis_weights(coords, size):
    """coords (P, G) float64 sample positions -> (P, size) summed bilinear row weights."""
    valid = (coords >= -1) & (coords <= size)
    v = coords.clamp(min=0)
    low = v.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    v = torch.where(at_end, low.double(), v)
    w_high = (v - low.double()) * valid
    w_low = (1 - (v - low.double())) * valid
    out = torch.zeros(coords.shape[0], coords.shape[1], size, dtype=torch.float64)
    out.scatter_add_(2, low.clamp(0, size - 1)[..., None], w_low[..., None])
    out.scatter_add_(2, high.clamp(0, size - 1)[..., None], w_high[..., None])
    return out.sum(1)


def roi_align_reference(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """float64 RoIAlign of x (N, C, H, W) over rois (K, 5); differentiable in x."""
    ph, pw = output_size
    n, c, h, w = x.shape
    x = x.double()
    outs = []
    for roi in rois.double():
        offset = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in roi[1:].tolist())
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw)
        gh, gw = max(gh, 0), max(gw, 0)
        count = max(gh * gw, 1)
        ys = (y1 + torch.arange(ph, dtype=torch.float64)[:, None] * bin_h
              + (torch.arange(gh, dtype=torch.float64)[None, :] + 0.5) * bin_h / max(gh, 1))
        xs = (x1 + torch.arange(pw, dtype=torch.float64)[:, None] * bin_w
              + (torch.arange(gw, dtype=torch.float64)[None, :] + 0.5) * bin_w / max(gw, 1))
        wy = _axis_weights(ys, h)  # (PH, H)
        wx = _axis_weights(xs, w)  # (PW, W)
        feat = x[int(roi[0])]      # (C, H, W)
        outs.append(torch.einsum("ph,chw,qw->cpq", wy, feat, wx) / count)
    if not outs:
        return x.new_zeros((0, c, ph, pw))
    return torch.stack(outs)


def _case(seed, n=2, c=3, h=9, w=11, k=12, scale=0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    rois = random_rois(k, n, h, w, scale, g)
    return x, rois


# ----------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2, 1])
@pytest.mark.parametrize("output_size", [(3, 3), (2, 4)])
def test_forward_matches_reference(aligned, sampling_ratio, output_size):
    x, rois = _case(seed=1 + sampling_ratio + 10 * aligned)
    out = roi_align(x, rois, output_size, 0.5, sampling_ratio, aligned)
    ref = roi_align_reference(x, rois, output_size, 0.5, sampling_ratio, aligned)
    assert out.shape == ref.shape == (rois.shape[0], x.shape[1]) + output_size
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_forward_float32_matches_reference(aligned):
    x, rois = _case(seed=7, dtype=torch.float32)
    out = roi_align(x, rois.float(), 7, 0.5, 2, aligned)
    ref = roi_align_reference(x, rois, (7, 7), 0.5, 2, aligned)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_adaptive_sampling_on_huge_rois():
    # ceil(roi / output) samples per bin: RoIs several times the map use large grids.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, -40.0, -30.0, 80.0, 70.0], [0, 0.0, 0.0, 300.0, 9.0]],
                        dtype=torch.float64)
    out = roi_align(x, rois, (2, 3), 0.25, 0, False)
    ref = roi_align_reference(x, rois, (2, 3), 0.25, 0, False)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_many_samples_per_bin():
    # 210 x 210 samples per bin: the CPU kernel's per-sample table is built in several chunks.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 1, 40, 50, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, -700.0, -600.0, 770.0, 870.0], [0, 5.0, 5.0, 1475.0, 1475.0],
                         [0, 10.0, 3.0, 30.0, 25.0]], dtype=torch.float64)
    out = roi_align(x, rois, 7, 1.0, 0, False)
    ref = roi_align_reference(x, rois, (7, 7), 1.0, 0, False)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert roi_align(x[..., :0], rois, 7, 1.0, 0).abs().sum().item() == 0  # empty map


# ------------------------------------------------------------------------- computed by hand
def _ramp():
    # x[0, 0, y, x] = 4 y + x on a 4 x 4 map: bilinear interpolation of it is exact, so a bin's
    # value is 4 * mean(sample y) + mean(sample x) over its valid, clamped samples.
    return (4 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :]).view(1, 1, 4, 4).double()


@pytest.mark.parametrize("roi, aligned, expected", [
    # RoI [0, 2] x [0, 2], one bin, 2 x 2 samples.
    # aligned=False: samples at 0.5 and 1.5 on each axis -> 4 * 1 + 1 = 5.
    ((0, 0, 0, 2, 2), False, 5.0),
    # aligned=True: corners shifted by -0.5, samples at 0 and 1 -> 4 * 0.5 + 0.5 = 2.5.
    ((0, 0, 0, 2, 2), True, 2.5),
    # Tiny RoI [1, 1.2]: aligned=False clamps its size to 1 -> samples 1.25, 1.75 -> 7.5;
    ((0, 1, 1, 1.2, 1.2), False, 7.5),
    # aligned=True keeps size 0.2 from 0.5 -> samples 0.55, 0.65 -> 4 * 0.6 + 0.6 = 3.0.
    ((0, 1, 1, 1.2, 1.2), True, 3.0),
    # y in [-2, 0]: sample y = -1.5 is outside [-1, H] (contributes 0), y = -0.5 clamps to 0;
    # x samples 0.5 and 1.5 -> (0.5 + 1.5) / 4 samples = 0.5.
    ((0, 0, -2, 2, 0), False, 0.5),
    # y in [3, 5] on a 4-row map: y = 3.5 reads the last row (y_low >= H - 1 -> y = 3),
    # y = 4.5 > H contributes 0; x samples 0.5 and 1.5 -> (12.5 + 13.5) / 4 = 6.5.
    ((0, 0, 3, 2, 5), False, 6.5),
])
def test_hand_computed(roi, aligned, expected):
    out = roi_align(_ramp(), torch.tensor([roi], dtype=torch.float64), 1, 1.0, 2, aligned)
    assert out.item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------- backward
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_backward_matches_reference(aligned, sampling_ratio):
    x, rois = _case(seed=20 + sampling_ratio + aligned)
    x.requires_grad_(True)
    grad_out = torch.randn(rois.shape[0], x.shape[1], 3, 4, dtype=torch.float64)
    (gx,) = torch.autograd.grad(roi_align(x, rois, (3, 4), 0.5, sampling_ratio, aligned),
                                x, grad_out)
    (gref,) = torch.autograd.grad(
        roi_align_reference(x, rois, (3, 4), 0.5, sampling_ratio, aligned), x, grad_out)
    torch.testing.assert_close(gx, gref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned):
    x, rois = _case(seed=31, n=2, c=2, h=6, w=7, k=5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (2, 3), 0.5, 2, aligned), (x,), eps=1e-6, atol=1e-8)


# ------------------------------------------------------------------------ edges and dtypes
def test_empty_rois_forward_and_backward():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5, dtype=torch.float64), 7, 0.5, 2)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_non_contiguous_inputs():
    x, rois = _case(seed=5, dtype=torch.float32)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, channels-last-like strides
    assert not x_nc.is_contiguous()
    rois_wide = torch.cat([rois.float(), torch.zeros(rois.shape[0], 3)], 1)[:, :5]
    assert not rois_wide.is_contiguous()
    torch.testing.assert_close(roi_align(x_nc, rois_wide, 4, 0.5, 2),
                               roi_align(x, rois.float(), 4, 0.5, 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_float32(dtype):
    x, rois = _case(seed=9, dtype=torch.float32)
    ref = roi_align(x, rois.float(), 5, 0.5, 2)
    out = roi_align(x.to(dtype), rois.float(), 5, 0.5, 2)  # float32 rois beside low-precision x
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    x16 = x.to(dtype).requires_grad_(True)
    roi_align(x16, rois.to(dtype), 5, 0.5, 2).float().sum().backward()
    assert x16.grad.dtype == dtype


def test_autocast_cpu_bfloat16():
    x, rois = _case(seed=10, dtype=torch.float32)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feat = conv(x)
        out = roi_align(feat, rois.float(), 3, 0.5, 2)
    assert feat.dtype == out.dtype == torch.bfloat16
    ref = roi_align(conv(x).detach(), rois.float(), 3, 0.5, 2)
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_module_matches_function():
    x, rois = _case(seed=11)
    m = RoIAlign((3, 2), 0.5, 0, aligned=True)
    assert "aligned=True" in repr(m)
    torch.testing.assert_close(m(x, rois), roi_align(x, rois, (3, 2), 0.5, 0, True))


def test_bad_arguments_name_the_argument():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="`rois` must have shape"):
        roi_align(x, torch.zeros(3, 4), 2, 1.0, 2)
    with pytest.raises(ValueError, match="`input` must be a 4-D"):
        roi_align(x[0], torch.zeros(3, 5), 2, 1.0, 2)
    with pytest.raises(TypeError, match="`input` must be float32"):
        roi_align(x.long(), torch.zeros(3, 5), 2, 1.0, 2)
    # The kernels check too (for callers of torch.ops.pydetectron.roi_align directly).
    with pytest.raises(RuntimeError, match="`rois` must have shape"):
        torch.ops.pydetectron.roi_align(x, torch.zeros(3, 4), 1.0, 2, 2, 2, False)
    with pytest.raises(RuntimeError, match=r"`rois\[0, 0\]` \(batch index\) is 3"):
        roi_align(x, torch.tensor([[3.0, 0, 0, 2, 2]]), 2, 1.0, 2)
    with pytest.raises(ValueError, match="`output_size` must be positive"):
        roi_align(x, torch.zeros(1, 5), 0, 1.0, 2)


def test_torch_compile_traces_forward_and_backward():
    x, rois = _case(seed=12, dtype=torch.float32)
    x.requires_grad_(True)

    def f(t, r):
        return roi_align(t, r, 2, 0.5, 2).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_c,) = torch.autograd.grad(compiled(x, rois.float()), x)
    (g_e,) = torch.autograd.grad(f(x, rois.float()), x)
    torch.testing.assert_close(g_c, g_e)


def test_opcheck():
    x, rois = _case(seed=13, dtype=torch.float32)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.pydetectron.roi_align.default,
                          (x, rois.float(), 0.5, 2, 2, 2, False))


# ------------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (3, 5)])
def test_cuda_matches_cpu(aligned, sampling_ratio, output_size):
    g = torch.Generator().manual_seed(100 + sampling_ratio)
    x = torch.randn(2, 70, 23, 31, generator=g)
    rois = random_rois(60, 2, 23, 31, 0.25, g, dtype=torch.float32)
    grad = torch.randn((60, 70) + output_size, generator=g)
    xc = x.clone().requires_grad_(True)
    xg = x.cuda().requires_grad_(True)
    out_c = roi_align(xc, rois, output_size, 0.25, sampling_ratio, aligned)
    out_g = roi_align(xg, rois.cuda(), output_size, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-5, atol=1e-5)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes_match_cpu(dtype):
    g = torch.Generator().manual_seed(101)
    x = torch.randn(2, 16, 20, 20, generator=g).to(dtype)
    rois = random_rois(40, 2, 20, 20, 0.5, g, dtype=torch.float32)
    out_c = roi_align(x, rois, 7, 0.5, 2)
    out_g = roi_align(x.cuda(), rois.cuda(), 7, 0.5, 2)
    assert out_g.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out_g.cpu().float(), out_c.float(), rtol=tol, atol=tol)
    xg = x.cuda().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    roi_align(xg, rois.cuda(), 7, 0.5, 2).float().sum().backward()
    roi_align(xc, rois, 7, 0.5, 2).float().sum().backward()
    torch.testing.assert_close(xg.grad.cpu().float(), xc.grad.float(), rtol=tol * 4, atol=tol * 4)


@pytest.mark.cuda
@cuda
def test_cuda_gradcheck_float64():
    x, rois = _case(seed=102, n=2, c=2, h=6, w=7, k=5)
    x = x.cuda().requires_grad_(True)
    rois = rois.cuda()
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 0.5, 2, False), (x,),
                                    eps=1e-6, atol=1e-8)


@pytest.mark.cuda
@cuda
def test_cuda_empty_non_contiguous_and_bad_device():
    x = torch.randn(2, 4, 8, 8, device="cuda")
    assert roi_align(x, torch.zeros(0, 5, device="cuda"), 7, 0.5, 2).shape == (0, 4, 7, 7)
    x_nc = x.permute(0, 1, 3, 2)
    rois = torch.tensor([[1, 0, 0, 9, 9.0], [0, 2, 3, 12, 5]], device="cuda")
    torch.testing.assert_close(roi_align(x_nc, rois, 3, 0.5, 2),
                               roi_align(x_nc.contiguous(), rois, 3, 0.5, 2))
    with pytest.raises(ValueError, match="`rois` is on cpu"):
        roi_align(x, rois.cpu(), 3, 0.5, 2)


@pytest.mark.cuda
@cuda
def test_cuda_runs_on_the_current_stream():
    # A CUDA graph captures only work issued on the capturing (current) stream: a kernel
    # launched on another stream would fail the capture.
    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 20, 20.0], [1, 4, 4, 30, 12]], device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside the capture
            roi_align(x, rois, 3, 0.5, 2).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = roi_align(x.detach(), rois, 3, 0.5, 2)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, roi_align(x.detach(), rois, 3, 0.5, 2))
