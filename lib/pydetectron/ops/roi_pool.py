"""RoIPool: Caffe2's ``RoIPoolF`` (the Fast R-CNN max pooling) as Detectron uses it.

Shapes: ``input`` (N, C, H, W); ``rois`` (K, 5) = (batch_index, x1, y1, x2, y2); output
(K, C, PH, PW). RoI corners are rounded to feature cells after scaling, a RoI spans
``max(end - start + 1, 1)`` cells, bin ``p`` covers ``[floor(p * bin), ceil((p + 1) * bin))``
clipped to the map, and an empty bin outputs 0. The gradient goes to each bin's argmax.
"""
import torch
from torch import nn

from pydetectron.ops import _ext
from pydetectron.ops._utils import check_features_and_rois, pair


def roi_pool(input, rois, output_size, spatial_scale):
    """Max-pool ``input`` (N, C, H, W) over ``rois`` (K, 5) into (K, C, PH, PW) bins."""
    _ext.load()
    check_features_and_rois(input, rois, "roi_pool")
    ph, pw = pair(output_size, "output_size")
    output, _ = torch.ops.pydetectron.roi_pool(input, rois, float(spatial_scale), ph, pw)
    return output


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`; ``forward(input, rois)``."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self.spatial_scale = float(spatial_scale)

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return "output_size=%s, spatial_scale=%s" % (self.output_size, self.spatial_scale)


def _register():
    """Autograd and fake kernels for the C++ ops (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::roi_pool")
    def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
        torch._check(input.dim() == 4, lambda: "roi_pool: `input` must be 4-D (N, C, H, W)")
        torch._check(rois.dim() == 2 and rois.size(1) == 5,
                     lambda: "roi_pool: `rois` must have shape (K, 5)")
        shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
        return input.new_empty(shape), input.new_empty(shape, dtype=torch.long)

    @torch.library.register_fake("pydetectron::_roi_pool_backward")
    def _roi_pool_backward_fake(grad, argmax, batch_size, channels, height, width):
        return grad.new_empty((batch_size, channels, height, width))

    def setup_context(ctx, inputs, output):
        input = inputs[0]
        _, argmax = output
        ctx.mark_non_differentiable(argmax)
        ctx.save_for_backward(argmax)
        ctx.input_shape = tuple(input.shape)

    def backward(ctx, grad, grad_argmax):
        argmax, = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.pydetectron._roi_pool_backward(grad, argmax, n, c, h, w)
        return grad_input, None, None, None, None

    torch.library.register_autograd("pydetectron::roi_pool", backward,
                                    setup_context=setup_context)
