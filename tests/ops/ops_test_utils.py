"""Shared test helpers for the ops tests: random RoIs and devices."""
import pytest
import torch

from pydetectron import ops

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason="pydetectron._C not built (run `bash make.sh`)")


def cuda_kernels_available():
    return torch.cuda.is_available() and ops._ext.has_cuda_kernels()


def random_rois(num, batch_size, height, width, spatial_scale, generator, dtype=torch.float64,
                min_size=0.2, max_size=None):
    """(num, 5) RoIs in image coordinates; some partly outside the image, some tiny, some huge.

    Sides are log-uniform in [min_size, max_size] image pixels (default: up to 1.6x the image).
    """
    img_h, img_w = height / spatial_scale, width / spatial_scale
    if max_size is None:
        max_size = 1.6 * max(img_h, img_w)
    # Sizes spread log-uniformly between tiny (below one feature cell) and larger than the image.
    u = torch.rand(num, 2, generator=generator, dtype=torch.float64)
    lo = torch.log(torch.tensor(float(min_size), dtype=torch.float64))
    hi = torch.log(torch.tensor(float(max_size), dtype=torch.float64))
    sizes = torch.exp(lo + u * (hi - lo))
    # Top-left corners from a bit outside the image to inside it.
    x1 = (torch.rand(num, generator=generator, dtype=torch.float64) * 1.3 - 0.15) * img_w
    y1 = (torch.rand(num, generator=generator, dtype=torch.float64) * 1.3 - 0.15) * img_h
    batch = torch.randint(0, batch_size, (num,), generator=generator).double()
    rois = torch.stack([batch, x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], dim=1)
    return rois.to(dtype)


def random_boxes(num, generator, dtype=torch.float32, image=600.0, max_size=200.0):
    """(num, 4) boxes (x1, y1, x2, y2) with integer-ish and fractional corners."""
    xy = torch.rand(num, 2, generator=generator) * image
    wh = torch.rand(num, 2, generator=generator) * max_size + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)
