"""roi_align_fpn (every RoI pooled from its own pyramid level in one op) against the per-level
roi_align calls it replaces: the same bits forward and backward, on the CPU and on CUDA."""
import pytest
import torch

from pydetectron.ops import fpn_roi_transform, map_rois_to_fpn_levels, roi_align, roi_align_fpn
from ops_test_utils import cuda_kernels_available, needs_ext, random_rois

pytestmark = needs_ext

SCALES = [1 / 32, 1 / 16, 1 / 8, 1 / 4]  # coarsest first, as fpn_roi_transform passes them


def _pyramid(seed, dtype=torch.float64, num_rois=48, channels=3, empty_level=1):
    """Features for SCALES, RoIs (some partly outside the image) and a level index per RoI that
    covers every level except `empty_level` (None: all levels)."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, channels, int(256 * s), int(320 * s), generator=g, dtype=dtype)
             for s in SCALES]
    rois = random_rois(num_rois, 2, 64, 80, 0.25, g, dtype=dtype, min_size=4.0, max_size=500.0)
    used = [i for i in range(len(SCALES)) if i != empty_level]
    levels = torch.tensor(used)[torch.randint(0, len(used), (num_rois,), generator=g)]
    levels[:len(used)] = torch.tensor(used)  # every used level has at least one RoI
    return feats, rois, levels


def per_level_roi_align(feats, rois, levels, output_size, scales, sampling_ratio, aligned):
    """The split path: one roi_align call per level over its RoIs (in input order), the results
    put back in input order; differentiable in `feats`."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], ph, pw))
    for i, feat in enumerate(feats):
        idx = torch.nonzero(levels == i).flatten()
        if idx.numel() == 0:
            continue
        pooled = roi_align(feat, rois[idx], output_size, scales[i], sampling_ratio, aligned)
        out = out.index_copy(0, idx, pooled)
    return out


def _grads(out, feats, grad):
    """d(out . grad)/d(feats), zeros for a map out of the graph."""
    gs = torch.autograd.grad(out, feats, grad, allow_unused=True)
    return [torch.zeros_like(f) if g is None else g for f, g in zip(feats, gs)]


# -------------------------------------------------------------------------- equals per level
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_equals_per_level_roi_align(dtype, aligned, sampling_ratio):
    feats, rois, levels = _pyramid(seed=10 + sampling_ratio + 4 * aligned, dtype=dtype)
    assert (rois[:, 1] < 0).any() and (rois[:, 3] > 320).any()  # some RoIs partly outside
    feats = [f.requires_grad_(True) for f in feats]
    out = roi_align_fpn(feats, rois, levels, (7, 5), SCALES, sampling_ratio, aligned)
    ref = per_level_roi_align(feats, rois, levels, (7, 5), SCALES, sampling_ratio, aligned)
    assert out.shape == (48, 3, 7, 5) and out.dtype == dtype
    assert torch.equal(out, ref)
    assert out.abs().sum() > 0
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g_out, g_ref = _grads(out, feats, grad), _grads(ref, feats, grad)
    for i, (a, b) in enumerate(zip(g_out, g_ref)):
        assert torch.equal(a, b), "level %d" % i
    assert torch.equal(g_out[1], torch.zeros_like(feats[1]))  # the empty level gets zeros
    assert all(g.abs().sum() > 0 for i, g in enumerate(g_out) if i != 1)


def test_single_level_and_int32_levels():
    feats, rois, _ = _pyramid(seed=3)
    levels = torch.zeros(rois.shape[0], dtype=torch.int32)
    out = roi_align_fpn(feats[2:3], rois, levels, 4, SCALES[2:3], 2, True)
    assert torch.equal(out, roi_align(feats[2], rois, 4, SCALES[2], 2, True))


def test_fpn_roi_transform_gradients_equal_split_path():
    feats, rois, _ = _pyramid(seed=4)
    feats = [f.requires_grad_(True) for f in feats]
    out = fpn_roi_transform(feats, rois, 7, SCALES, 2)  # k_min=2, k_max=5
    idx = 5 - map_rois_to_fpn_levels(rois, 2, 5)
    assert len(set(idx.tolist())) >= 3
    ref = per_level_roi_align(feats, rois, idx, 7, SCALES, 2, False)
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    for a, b in zip(_grads(out, feats, grad), _grads(ref, feats, grad)):
        assert torch.equal(a, b)


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 2, h, w, generator=g, dtype=torch.float64, requires_grad=True)
             for h, w in [(3, 4), (5, 6), (9, 11)]]
    scales = [0.25, 0.5, 1.0]
    rois = random_rois(6, 2, 9, 11, 1.0, g, min_size=1.0, max_size=12.0)
    levels = torch.tensor([2, 0, 1, 2, 1, 0])
    assert torch.autograd.gradcheck(
        lambda *fs: roi_align_fpn(list(fs), rois, levels, (2, 3), scales, 2, False), tuple(feats),
        eps=1e-6, atol=1e-8)


# ------------------------------------------------------------------------- edges and dtypes
def test_no_rois_forward_and_backward():
    feats, rois, levels = _pyramid(seed=6)
    feats = [f.requires_grad_(True) for f in feats]
    out = roi_align_fpn(feats, rois[:0], levels[:0], 7, SCALES, 2)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    for f in feats:
        assert f.grad is not None and torch.equal(f.grad, torch.zeros_like(f))


def test_empty_feature_map_pools_zeros():
    feats = [torch.randn(1, 2, 0, 5), torch.randn(1, 2, 6, 6, requires_grad=True)]
    rois = torch.tensor([[0, 1, 1, 4, 4.0], [0, 0, 0, 3, 5]])
    out = roi_align_fpn(feats, rois, torch.tensor([0, 1]), 2, [0.5, 1.0], 2)
    assert torch.equal(out[0], torch.zeros(2, 2, 2))
    assert torch.equal(out[1:], roi_align(feats[1], rois[1:], 2, 1.0, 2))
    out.sum().backward()
    assert torch.equal(feats[1].grad.sum(), torch.tensor(2 * 2 * 2.0))  # 2 ch x 4 bins, w sum 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float32(dtype):
    feats, rois, levels = _pyramid(seed=7, dtype=torch.float32, channels=4)
    ref = roi_align_fpn(feats, rois, levels, 5, SCALES, 2)
    low = [f.to(dtype).requires_grad_(True) for f in feats]
    out = roi_align_fpn(low, rois, levels, 5, SCALES, 2)  # float32 rois beside low-precision maps
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert all(f.grad.dtype == dtype for f in low)
    # fp32 accumulation: the low-precision gradient is the float32 one, rounded
    feats32 = [f.detach().to(dtype).float().requires_grad_(True) for f in feats]
    roi_align_fpn(feats32, rois, levels, 5, SCALES, 2).sum().backward()
    for f, f32 in zip(low, feats32):
        torch.testing.assert_close(f.grad.float(), f32.grad, rtol=tol, atol=tol)


def test_bad_arguments_name_the_argument():
    feats, rois, levels = _pyramid(seed=8)
    with pytest.raises(ValueError, match="same batch size N and channels C"):
        roi_align_fpn([feats[0], feats[1][:, :2]], rois, levels % 2, 7, SCALES[:2], 2)
    with pytest.raises(ValueError, match=r"`levels` must have shape \(K,\) with K = rois.size"):
        roi_align_fpn(feats, rois, levels[:-1], 7, SCALES, 2)
    with pytest.raises(ValueError, match=r"`features` must hold 1 to 8 feature maps, got 9"):
        roi_align_fpn([feats[0]] * 9, rois, levels, 7, [SCALES[0]] * 9, 2)
    with pytest.raises(ValueError, match="`spatial_scales` must have one scale per feature map"):
        roi_align_fpn(feats, rois, levels, 7, SCALES[:3], 2)
    with pytest.raises(TypeError, match="`levels` must be an integer tensor"):
        roi_align_fpn(feats, rois, levels.double(), 7, SCALES, 2)
    with pytest.raises(TypeError, match=r"`features\[1\]` is torch.float32 but `features\[0\]`"):
        roi_align_fpn([feats[0], feats[1].float()], rois, levels % 2, 7, SCALES[:2], 2)
    with pytest.raises(TypeError, match="`features` must be a list"):
        roi_align_fpn(feats[0], rois, levels, 7, SCALES, 2)
    with pytest.raises(ValueError, match=r"`rois` must have shape \(K, 5\)"):
        roi_align_fpn(feats, rois[:, 1:], levels, 7, SCALES, 2)
    bad = levels.clone()
    bad[3] = 4
    with pytest.raises(RuntimeError, match=r"`levels\[3\]` is 4 but `features` has 4 levels"):
        roi_align_fpn(feats, rois, bad, 7, SCALES, 2)
    # The kernels check too (for callers of torch.ops.pydetectron.roi_align_fpn directly).
    op = torch.ops.pydetectron.roi_align_fpn
    with pytest.raises(RuntimeError, match="same batch size N and channels C"):
        op([feats[0], feats[1][:, :2]], rois, levels % 2, SCALES[:2], 7, 7, 2, False)
    with pytest.raises(RuntimeError, match="`features` must hold 1 to 8 feature maps, got 9"):
        op([feats[0]] * 9, rois, levels, [SCALES[0]] * 9, 7, 7, 2, False)
    with pytest.raises(RuntimeError, match="`levels` must be int64"):
        op(feats, rois, levels.int(), SCALES, 7, 7, 2, False)
    with pytest.raises(RuntimeError, match=r"`levels` must have shape \(K,\)"):
        op(feats, rois, levels[:-1], SCALES, 7, 7, 2, False)


def _channels_last(feats):
    out = [f.detach().clone().to(memory_format=torch.channels_last).requires_grad_(True)
           for f in feats]
    assert all(not f.is_contiguous() for f in out)
    return out


def _is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_maps_give_the_same_outputs_and_channels_last_gradients():
    """Maps laid out channels-last (as channels-last convolutions leave the FPN levels): the
    same output as their NCHW copies, and gradients of the same values, laid out channels-last
    (so that they add to the other branches' gradients of those maps in one layout)."""
    feats, rois, levels = _pyramid(seed=31, channels=5)
    nchw = [f.clone().requires_grad_(True) for f in feats]
    nhwc = _channels_last(feats)
    out = roi_align_fpn(nhwc, rois, levels, (7, 5), SCALES, 2, False)
    ref = roi_align_fpn(nchw, rois, levels, (7, 5), SCALES, 2, False)
    assert torch.equal(out, ref) and out.abs().sum() > 0
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    for level, (a, b) in enumerate(zip(_grads(out, nhwc, grad), _grads(ref, nchw, grad))):
        assert _is_channels_last(a) and b.is_contiguous(), level
        assert torch.equal(a, b), level


def test_opcheck_and_torch_compile():
    feats, rois, levels = _pyramid(seed=9, dtype=torch.float32, num_rois=10)
    feats = [f.requires_grad_(True) for f in feats]
    torch.library.opcheck(torch.ops.pydetectron.roi_align_fpn.default,
                          (feats, rois, levels, SCALES, 2, 2, 2, False))

    def f(fs, r, lv):
        return roi_align_fpn(fs, r, lv, 2, SCALES, 2).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    g_c = torch.autograd.grad(compiled(feats, rois, levels), feats)
    g_e = torch.autograd.grad(f(feats, rois, levels), feats)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)
    # channels-last maps: the fake kernels give the real ones' layouts
    nhwc = _channels_last(feats)
    torch.library.opcheck(torch.ops.pydetectron.roi_align_fpn.default,
                          (nhwc, rois, levels, SCALES, 2, 2, 2, False))
    g_c = torch.autograd.grad(torch.compile(f, backend="aot_eager", fullgraph=True)(
        nhwc, rois, levels), nhwc)
    for a, b in zip(g_c, g_e):
        assert _is_channels_last(a)
        torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_cuda_equals_per_level_and_matches_cpu(aligned, sampling_ratio):
    feats, rois, levels = _pyramid(seed=20 + sampling_ratio, dtype=torch.float32, num_rois=200,
                                   channels=70)
    fc = [f.clone().requires_grad_(True) for f in feats]
    fg = [f.cuda().requires_grad_(True) for f in feats]
    rois_g, levels_g = rois.cuda(), levels.cuda()
    out_c = roi_align_fpn(fc, rois, levels, 7, SCALES, sampling_ratio, aligned)
    out_g = roi_align_fpn(fg, rois_g, levels_g, 7, SCALES, sampling_ratio, aligned)
    # the same kernels as roi_align on CUDA: the same bits as the per-level calls there
    ref_g = per_level_roi_align(fg, rois_g, levels_g, 7, SCALES, sampling_ratio, aligned)
    assert torch.equal(out_g, ref_g)
    # float32 sums of up to ~300 samples, contracted to FMAs on the GPU
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-4)
    grad = torch.randn(out_c.shape, generator=torch.Generator().manual_seed(2))
    g_c = _grads(out_c, fc, grad)
    g_g = _grads(out_g, fg, grad.cuda())
    g_ref = _grads(ref_g, fg, grad.cuda())
    for a, b, r in zip(g_c, g_g, g_ref):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b, r, rtol=1e-4, atol=1e-4)  # atomics add in any order
    assert torch.equal(g_g[1], torch.zeros_like(fg[1]))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cuda_dtypes_match_cpu(dtype):
    feats, rois, levels = _pyramid(seed=21, dtype=torch.float32, channels=16)
    feats = [f.to(dtype) for f in feats]
    fc = [f.clone().requires_grad_(True) for f in feats]
    fg = [f.cuda().requires_grad_(True) for f in feats]
    out_c = roi_align_fpn(fc, rois, levels, 7, SCALES, 2)
    out_g = roi_align_fpn(fg, rois.cuda(), levels.cuda(), 7, SCALES, 2)
    assert out_g.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out_g.cpu().float(), out_c.float(), rtol=tol, atol=tol)
    out_c.float().sum().backward()
    out_g.float().sum().backward()
    for a, b in zip(fc, fg):
        assert b.grad.dtype == dtype
        torch.testing.assert_close(b.grad.cpu().float(), a.grad.float(), rtol=tol * 4,
                                   atol=tol * 4)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_channels_last_maps_are_read_in_place(dtype):
    """Channels-last maps on CUDA, read in their layout (no copy to NCHW): the same bits as
    their NCHW copies forward (the same arithmetic, other addresses), and channels-last
    gradients equal to the NCHW ones up to the order of the float32 atomic adds."""
    feats, rois, levels = _pyramid(seed=22, dtype=torch.float32, num_rois=200, channels=70)
    feats = [f.to(dtype).cuda() for f in feats]
    rois, levels = rois.cuda(), levels.cuda()
    nchw = [f.clone().requires_grad_(True) for f in feats]
    nhwc = _channels_last(feats)
    for sampling_ratio in (0, 2):
        out = roi_align_fpn(nhwc, rois, levels, 7, SCALES, sampling_ratio)
        ref = roi_align_fpn(nchw, rois, levels, 7, SCALES, sampling_ratio)
        assert torch.equal(out, ref) and out.abs().sum() > 0
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out)
        tol = 1e-5 if dtype == torch.float32 else 1e-2      # (bf16: one rounding of the sum)
        for level, (a, b) in enumerate(zip(_grads(out, nhwc, grad), _grads(ref, nchw, grad))):
            assert _is_channels_last(a) and a.dtype == dtype, level
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.cuda
@cuda
def test_cuda_out_of_range_level_pools_zeros_and_no_rois():
    feats, rois, levels = _pyramid(seed=22, dtype=torch.float32)
    fg = [f.cuda().requires_grad_(True) for f in feats]
    bad = levels.clone()
    bad[0], bad[1] = 4, -1
    out = roi_align_fpn(fg, rois.cuda(), bad.cuda(), 7, SCALES, 2)
    assert torch.equal(out[:2].cpu(), torch.zeros(2, 3, 7, 7))
    ref = per_level_roi_align(fg, rois[2:].cuda(), levels[2:].cuda(), 7, SCALES, 2, False)
    assert torch.equal(out[2:], ref)
    empty = roi_align_fpn(fg, rois[:0].cuda(), levels[:0].cuda(), 7, SCALES, 2)
    assert empty.shape == (0, 3, 7, 7)
    grads = torch.autograd.grad(empty.sum(), fg)
    assert all(torch.equal(g, torch.zeros_like(f)) for g, f in zip(grads, fg))


@pytest.mark.cuda
@cuda
def test_cuda_fpn_roi_transform_makes_no_host_sync():
    feats, rois, _ = _pyramid(seed=23, dtype=torch.float32)
    fg = [f.cuda().requires_grad_(True) for f in feats]
    rois_g = rois.cuda()
    fpn_roi_transform(fg, rois_g, 7, SCALES, 2).sum().backward()  # warm-up (lazy inits)
    for f in fg:
        f.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fpn_roi_transform(fg, rois_g, 7, SCALES, 2)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = fpn_roi_transform(feats, rois, 7, SCALES, 2)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)
    assert all(f.grad is not None for f in fg)
    # the split path (RoIPoolF) does synchronise: the check above can fail
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            fpn_roi_transform(fg, rois_g, 7, SCALES, method="RoIPoolF")
    finally:
        torch.cuda.set_sync_debug_mode("default")
