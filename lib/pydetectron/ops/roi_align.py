"""RoIAlign, as Caffe2's ``RoIAlign`` op that Detectron's heads use (``aligned=False``).

Shapes: ``input`` (N, C, H, W); ``rois`` (K, 5) = (batch_index, x1, y1, x2, y2) in the input
image's coordinates; output (K, C, PH, PW).

Conventions (see csrc/roi_align/roi_align_geometry.h for the arithmetic):

- ``aligned=False`` (Detectron): a RoI's corners are ``coord * spatial_scale`` with no half-pixel
  shift, and its width and height are clamped to at least 1 feature cell.
- ``aligned=True``: the half-pixel-corrected variant (corners shifted by -0.5, no clamp).
- ``sampling_ratio <= 0``: adaptive, ``ceil(roi_size / output_size)`` samples per bin and axis.
- Samples at y < -1 or y > H (x likewise) contribute 0; each bin is the mean of its samples.

Gradients flow to ``input`` only (RoIs are treated as constants, as in Detectron). float16 and
bfloat16 features accumulate in float32; ``rois`` may have another floating dtype than ``input``
(float32 boxes with float16 features under autocast, for instance).
"""
import torch
from torch import nn

from pydetectron.ops import _ext
from pydetectron.ops._utils import check_features_and_rois, pair


def roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=False):
    """RoIAlign ``input`` (N, C, H, W) over ``rois`` (K, 5) -> (K, C, PH, PW).

    ``output_size``: int or (PH, PW); ``spatial_scale``: feature cells per input pixel (1/16 for
    C4, 1/4 ... 1/32 for FPN levels); ``sampling_ratio``: samples per bin and axis, <= 0 for
    adaptive.
    """
    _ext.load()
    check_features_and_rois(input, rois, "roi_align")
    ph, pw = pair(output_size, "output_size")
    return torch.ops.pydetectron.roi_align(input, rois, float(spatial_scale), ph, pw,
                                           int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`; ``forward(input, rois)``."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input, rois):
        return roi_align(input, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self):
        return "output_size=%s, spatial_scale=%s, sampling_ratio=%d, aligned=%s" % (
            self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)


def _register():
    """Autograd and fake kernels for the C++ ops (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::roi_align")
    def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                        aligned):
        torch._check(input.dim() == 4, lambda: "roi_align: `input` must be 4-D (N, C, H, W)")
        torch._check(rois.dim() == 2 and rois.size(1) == 5,
                     lambda: "roi_align: `rois` must have shape (K, 5)")
        return input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))

    @torch.library.register_fake("pydetectron::_roi_align_backward")
    def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width,
                                 batch_size, channels, height, width, sampling_ratio, aligned):
        return grad.new_empty((batch_size, channels, height, width))

    def setup_context(ctx, inputs, output):
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        ctx.input_shape = tuple(input.shape)

    def backward(ctx, grad):
        rois, = ctx.saved_tensors
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.pydetectron._roi_align_backward(
            grad, rois, spatial_scale, pooled_height, pooled_width, n, c, h, w, sampling_ratio,
            aligned)
        return grad_input, None, None, None, None, None, None

    torch.library.register_autograd("pydetectron::roi_align", backward,
                                    setup_context=setup_context)
