"""BilinearInterpolation2d: Detectron's fixed bilinear upsampling (a frozen transposed conv).

Detectron upsamples keypoint heatmaps (``KRCNN.UP_SCALE``) and, optionally, mask logits
(``MRCNN.UPSAMPLE_RATIO``) with ``DetectionModelHelper.BilinearInterpolation``: a ConvTranspose of
kernel 2s, stride s, padding s/2 whose weight is the FCN bilinear filter on the channel diagonal
and whose bias is zero, both excluded from the update. They are still parameters of the Caffe2
model, so a ``model_final.pkl`` carries them (e.g. ``kps_score_w`` (K, K, 4, 4), ``kps_score_b``).
Here they are persistent buffers: in the state dict and in the weight mapping, never trained.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["bilinear_upsample_filter", "BilinearInterpolation2d"]


def bilinear_upsample_filter(size):
    """(size, size) FCN bilinear kernel: (1 - |i - c| / f) * (1 - |j - c| / f), f = ceil(size / 2)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return ((1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)).astype(np.float32)


class BilinearInterpolation2d(nn.Module):
    """(N, C, H, W) -> (N, C, sH, sW) by a fixed transposed conv (s = ``up_scale``, even)."""

    def __init__(self, dim_in, dim_out, up_scale):
        super().__init__()
        if dim_in != dim_out:
            raise ValueError("BilinearInterpolation2d: dim_in (%d) must equal dim_out (%d)"
                             % (dim_in, dim_out))
        if up_scale % 2 != 0:
            raise ValueError("BilinearInterpolation2d: up_scale must be even, got %r" % (up_scale,))
        self.dim = dim_in
        self.up_scale = int(up_scale)
        kernel_size = 2 * self.up_scale
        weight = np.zeros((dim_in, dim_out, kernel_size, kernel_size), dtype=np.float32)
        weight[range(dim_in), range(dim_out), :, :] = bilinear_upsample_filter(kernel_size)
        self.register_buffer("weight", torch.from_numpy(weight))
        self.register_buffer("bias", torch.zeros(dim_out))

    def forward(self, x):
        # (N, C, H, W) -> (N, C, H * s, W * s): (H - 1) s - 2 (s / 2) + 2 s = H s
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.up_scale,
                                  padding=self.up_scale // 2)

    def extra_repr(self):
        return "%d, up_scale=%d" % (self.dim, self.up_scale)
