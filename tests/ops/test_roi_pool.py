"""RoIPool (Caffe2 RoIPoolF) against a float64 reference written here."""
import math

import pytest
import torch

from pydetectron.ops import RoIPool, roi_pool
from ops_test_utils import cuda_kernels_available, needs_ext, random_rois

pytestmark = needs_ext


def _round(v):  # C's round(): half away from zero
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def roi_pool_reference(x, rois, output_size, scale):
    ph_n, pw_n = output_size
    n, c, h, w = x.shape
    out = []
    for roi in rois.double().tolist():
        b = int(roi[0])
        sw, sh, ew, eh = (_round(v * scale) for v in roi[1:])
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bins = []
        for ph in range(ph_n):
            row = []
            for pw in range(pw_n):
                hs = min(max(math.floor(ph * rh / ph_n) + sh, 0), h)
                he = min(max(math.ceil((ph + 1) * rh / ph_n) + sh, 0), h)
                ws = min(max(math.floor(pw * rw / pw_n) + sw, 0), w)
                we = min(max(math.ceil((pw + 1) * rw / pw_n) + sw, 0), w)
                if he <= hs or we <= ws:
                    row.append(x.new_zeros(c))
                else:
                    row.append(x[b, :, hs:he, ws:we].amax(dim=(1, 2)))
            bins.append(torch.stack(row, -1))
        out.append(torch.stack(bins, -2))
    return torch.stack(out) if out else x.new_zeros((0, c, ph_n, pw_n))


def _case(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=dtype)
    rois = random_rois(15, 2, 9, 11, 0.5, g)
    return x, rois


@pytest.mark.parametrize("output_size", [(2, 2), (3, 4), (7, 7)])
def test_forward_and_backward_match_reference(output_size):
    x, rois = _case(seed=sum(output_size))
    x.requires_grad_(True)
    out = roi_pool(x, rois, output_size, 0.5)
    ref = roi_pool_reference(x, rois, output_size, 0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, x, grad)
    (g2,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_hand_computed_rounding_and_empty_bins():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # Corners 0.5 * (1, 1, 4.9, 4.9) round to (1, 1, 2, 2) (2.45 -> 2): a 2 x 2 window, max 10.
    assert roi_pool(x, torch.tensor([[0, 1, 1, 4.9, 4.9]]), 1, 0.5).item() == 10
    # A RoI entirely outside the map: every bin empty -> 0.
    assert roi_pool(x, torch.tensor([[0, 20, 20, 30, 30.0]]), 2, 1.0).abs().sum().item() == 0


def test_gradcheck_empty_and_module():
    x, rois = _case(seed=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 3, 0.5), (x,))
    assert roi_pool(x, rois[:0], 3, 0.5).shape == (0, 3, 3, 3)
    torch.testing.assert_close(RoIPool(3, 0.5)(x, rois), roi_pool(x, rois, 3, 0.5))
    with pytest.raises(ValueError, match="`rois` must have shape"):
        roi_pool(x, rois[:, :4], 3, 0.5)


cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 32, 20, 24, generator=g).to(dtype)
    rois = random_rois(50, 2, 20, 24, 0.25, g, dtype=torch.float32)
    xc, xg = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
    out_c, out_g = roi_pool(xc, rois, 7, 0.25), roi_pool(xg, rois.cuda(), 7, 0.25)
    assert torch.equal(out_g.cpu(), out_c)
    grad = torch.randn(out_c.shape, generator=g).to(dtype)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=tol, atol=tol)
