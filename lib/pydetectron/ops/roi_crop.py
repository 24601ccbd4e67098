"""RoICrop: Detectron.pytorch's affine-grid RoI transform (``ROI_XFORM_METHOD: RoICrop``).

Each RoI gets an affine sampling grid spanning its corners (``net_utils.affine_grid_gen``): with
the RoI at (x1, y1, x2, y2) in feature cells and the map H x W,

    theta = [[(x2 - x1) / (W - 1), 0, (x1 + x2 - W + 1) / (W - 1)],
             [0, (y2 - y1) / (H - 1), (y1 + y2 - H + 1) / (H - 1)]]

so the grid's first and last samples fall exactly on the corners (``align_corners=True``). The
features are sampled bilinearly there (taps outside the map read 0, as Detectron.pytorch's
BilinearSamplerBHWD does), and with ``max_pool=True`` (``CROP_RESIZE_WITH_MAX_POOL``) the grid is
twice ``output_size`` and a 2x2 max pool follows.

Differences from Detectron.pytorch, on purpose: the RoI is scaled by ``spatial_scale`` (it hard-codes
1/16, which is the C4 value), and each RoI samples the image its batch index names (its CUDA
kernel assumed RoIs grouped evenly per image). Pure torch: any device, differentiable in
``input`` (the grid is built from detached RoIs, as there).
"""
import torch
import torch.nn.functional as F

from pydetectron.ops._utils import pair


def roi_crop(input, rois, output_size, spatial_scale, max_pool=True):
    """Crop-and-resize ``input`` (N, C, H, W) over ``rois`` (K, 5) -> (K, C, PH, PW)."""
    if input.dim() != 4:
        raise ValueError("roi_crop: `input` must be 4-D (N, C, H, W), got shape %s"
                         % (tuple(input.shape),))
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError("roi_crop: `rois` must have shape (K, 5) = (batch_index, x1, y1, x2, y2),"
                         " got %s" % (tuple(rois.shape),))
    if rois.device != input.device:
        raise ValueError("roi_crop: `rois` is on %s but `input` is on %s"
                         % (rois.device, input.device))
    ph, pw = pair(output_size, "output_size")
    n, c, h, w = input.shape
    if h < 2 or w < 2:
        raise ValueError("roi_crop: the feature map must be at least 2x2 (the affine grid divides"
                         " by H - 1 and W - 1), got %dx%d" % (h, w))
    gh, gw = (2 * ph, 2 * pw) if max_pool else (ph, pw)
    k = rois.size(0)
    if k == 0:
        return input.new_zeros((0, c, ph, pw))

    rois = rois.detach().to(input.dtype)
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))  # (K,) each
    zero = torch.zeros_like(x1)
    theta = torch.stack([
        (x2 - x1) / (w - 1), zero, (x1 + x2 - w + 1) / (w - 1),
        zero, (y2 - y1) / (h - 1), (y1 + y2 - h + 1) / (h - 1),
    ], dim=1).view(k, 2, 3)
    grid = F.affine_grid(theta, [k, 1, gh, gw], align_corners=True)  # (K, gh, gw, 2) as (x, y)

    # Sample every image at every RoI's grid (one call, no host sync), then keep each RoI's own
    # image: (N, C, K * gh, gw) -> (K, C, gh, gw).
    grid = grid.reshape(1, k * gh, gw, 2).expand(n, -1, -1, -1)
    crops = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    crops = crops.view(n, c, k, gh, gw)
    batch = rois[:, 0].long()
    out = crops[batch, :, torch.arange(k, device=input.device)]  # (K, C, gh, gw)
    if max_pool:
        out = F.max_pool2d(out, 2, 2)
    return out
