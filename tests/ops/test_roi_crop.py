"""RoICrop against a float64 bilinear-sampling reference of Detectron.pytorch's transform."""
import pytest
import torch

from pydetectron.ops import roi_crop
from ops_test_utils import random_rois


def _bilinear_zero_pad(plane, y, x):
    h, w = plane.shape
    y0, x0 = int(torch.floor(y)), int(torch.floor(x))
    val = plane.new_zeros(())
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                val = val + wy * wx * plane[yy, xx]
    return val


def roi_crop_reference(x, rois, size, scale, max_pool):
    g = 2 * size if max_pool else size
    out = []
    for roi in rois.double():
        b = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * scale).tolist()
        # The affine grid with align_corners=True puts g samples evenly from corner to corner.
        ys = [y1 + (y2 - y1) * i / (g - 1) for i in range(g)]
        xs = [x1 + (x2 - x1) * j / (g - 1) for j in range(g)]
        crop = torch.stack([torch.stack([torch.stack([
            _bilinear_zero_pad(x[b, c], torch.tensor(yv, dtype=torch.float64),
                               torch.tensor(xv, dtype=torch.float64)) for xv in xs])
            for yv in ys]) for c in range(x.shape[1])])
        out.append(crop)
    out = torch.stack(out)
    return torch.nn.functional.max_pool2d(out, 2, 2) if max_pool else out


@pytest.mark.parametrize("max_pool", [True, False])
def test_matches_reference(max_pool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(4, 2, 7, 9, 0.5, g)
    out = roi_crop(x, rois, 3, 0.5, max_pool=max_pool)
    assert out.shape == (4, 2, 3, 3)
    torch.testing.assert_close(out, roi_crop_reference(x, rois, 3, 0.5, max_pool),
                               rtol=1e-10, atol=1e-10)


def test_gradcheck_and_empty():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(3, 2, 5, 6, 0.5, g)
    assert torch.autograd.gradcheck(lambda t: roi_crop(t, rois, 2, 0.5, max_pool=False), (x,))
    assert roi_crop(x, rois[:0], 2, 0.5).shape == (0, 2, 2, 2)
    with pytest.raises(ValueError, match="`rois` must have shape"):
        roi_crop(x, rois[:, :4], 2, 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 12, 14, generator=g)
    rois = random_rois(20, 2, 12, 14, 0.25, g, dtype=torch.float32)
    torch.testing.assert_close(roi_crop(x.cuda(), rois.cuda(), 7, 0.25).cpu(),
                               roi_crop(x, rois, 7, 0.25), rtol=1e-5, atol=1e-5)
