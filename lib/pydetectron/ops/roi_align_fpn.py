"""RoIAlign over a feature pyramid: every RoI pooled from its own level by one op.

``roi_align_fpn(features, rois, levels, ...)`` equals calling :func:`roi_align` on each RoI with
``features[levels[k]]`` and ``spatial_scales[levels[k]]`` (the same bits: the kernels are
``roi_align``'s), but runs as one kernel launch over all RoIs, forward and backward, and never
reads ``levels`` back to the host. That is what keeps :func:`fpn_roi_transform` free of host
synchronisations on the GPU (the split by level needs the per-level counts on the host).

Shapes: ``features`` L <= 8 maps (N, C, H_l, W_l) of one dtype, N, C and device; ``rois`` (K, 5)
= (batch_index, x1, y1, x2, y2); ``levels`` (K,) integer; output (K, C, PH, PW). Gradients flow
to every feature map (zeros where no RoI reads). A level index outside [0, L) raises on the CPU;
on CUDA (where checking would cost a synchronisation) such a RoI outputs 0 and passes back no
gradient, as a batch index outside [0, N) does. Channels-last maps (channels-last convolutions)
are read in place on CUDA, and their gradients come back channels-last (on the CPU too).
"""
import torch

from pydetectron.ops import _ext
from pydetectron.ops._utils import channels_last_only, check_rois, floating, pair

MAX_LEVELS = 8  # the levels one CUDA launch carries in its argument struct

_OP = "roi_align_fpn"


def _check_arguments(features, rois, levels, spatial_scales):
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError("%s: `features` must be a list of (N, C, H, W) tensors, one per level, "
                        "got %s" % (_OP, type(features).__name__))
    if not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError("%s: `features` must hold 1 to %d feature maps, got %d"
                         % (_OP, MAX_LEVELS, len(features)))
    f0 = features[0]
    for i, f in enumerate(features):
        name = "features[%d]" % i
        floating(f, _OP, name)
        if f.dim() != 4:
            raise ValueError("%s: `%s` must be a 4-D (N, C, H, W) tensor, got shape %s"
                             % (_OP, name, tuple(f.shape)))
        if f.dtype != f0.dtype:
            raise TypeError("%s: `%s` is %s but `features[0]` is %s; all levels need one dtype"
                            % (_OP, name, f.dtype, f0.dtype))
        if f.device != f0.device:
            raise ValueError("%s: `%s` is on %s but `features[0]` is on %s; all levels must be "
                             "on one device" % (_OP, name, f.device, f0.device))
        if f.shape[:2] != f0.shape[:2]:
            raise ValueError("%s: `%s` has shape %s but `features[0]` has %s; all levels need "
                             "the same batch size N and channels C"
                             % (_OP, name, tuple(f.shape), tuple(f0.shape)))
    check_rois(rois, _OP)
    if rois.device != f0.device:
        raise ValueError("%s: `rois` is on %s but `features` are on %s; both must be on the "
                         "same device" % (_OP, rois.device, f0.device))
    if not isinstance(levels, torch.Tensor):
        raise TypeError("%s: `levels` must be a tensor, got %s" % (_OP, type(levels).__name__))
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError("%s: `levels` must be an integer tensor (indices into `features`), got %s"
                        % (_OP, levels.dtype))
    if levels.dim() != 1 or levels.size(0) != rois.size(0):
        raise ValueError("%s: `levels` must have shape (K,) with K = rois.size(0) = %d, got %s"
                         % (_OP, rois.size(0), tuple(levels.shape)))
    if levels.device != f0.device:
        raise ValueError("%s: `levels` is on %s but `features` are on %s; both must be on the "
                         "same device" % (_OP, levels.device, f0.device))
    if len(spatial_scales) != len(features):
        raise ValueError("%s: `spatial_scales` must have one scale per feature map (%d), got %d"
                         % (_OP, len(features), len(spatial_scales)))


def roi_align_fpn(features, rois, levels, output_size, spatial_scales, sampling_ratio,
                  aligned=False):
    """RoIAlign each of ``rois`` (K, 5) on ``features[levels[k]]`` -> (K, C, PH, PW).

    ``features``: list of L (N, C, H_l, W_l) maps (1 <= L <= 8); ``levels`` (K,): index into
    ``features`` and ``spatial_scales`` of each RoI; ``output_size``, ``sampling_ratio`` and
    ``aligned`` as for :func:`roi_align`. Runs without host synchronisation on CUDA.
    """
    _ext.load()
    _check_arguments(features, rois, levels, spatial_scales)
    ph, pw = pair(output_size, "output_size")
    scales = [float(s) for s in spatial_scales]
    return torch.ops.pydetectron.roi_align_fpn(list(features), rois, levels.to(torch.int64),
                                               scales, ph, pw, int(sampling_ratio),
                                               bool(aligned))


def _register():
    """Autograd and fake kernels for the C++ ops (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::roi_align_fpn")
    def _roi_align_fpn_fake(features, rois, levels, spatial_scales, pooled_height, pooled_width,
                            sampling_ratio, aligned):
        torch._check(1 <= len(features) <= MAX_LEVELS,
                     lambda: "roi_align_fpn: `features` must hold 1 to %d maps" % MAX_LEVELS)
        torch._check(all(f.dim() == 4 for f in features),
                     lambda: "roi_align_fpn: `features` must be 4-D (N, C, H, W) maps")
        torch._check(rois.dim() == 2 and rois.size(1) == 5,
                     lambda: "roi_align_fpn: `rois` must have shape (K, 5)")
        torch._check(levels.dim() == 1 and levels.size(0) == rois.size(0),
                     lambda: "roi_align_fpn: `levels` must have shape (K,)")
        f0 = features[0]
        return f0.new_empty((rois.size(0), f0.size(1), pooled_height, pooled_width))

    @torch.library.register_fake("pydetectron::_roi_align_fpn_backward")
    def _roi_align_fpn_backward_fake(grad, rois, levels, spatial_scales, pooled_height,
                                     pooled_width, batch_size, channels, heights, widths,
                                     sampling_ratio, aligned, channels_last=False):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return [grad.new_empty((batch_size, channels, h, w)).contiguous(memory_format=fmt)
                for h, w in zip(heights, widths)]

    def setup_context(ctx, inputs, output):
        features, rois, levels, spatial_scales, ph, pw, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois, levels)
        ctx.args = (spatial_scales, ph, pw, sampling_ratio, aligned)
        ctx.batch_channels = (features[0].size(0), features[0].size(1))
        ctx.sizes = ([f.size(2) for f in features], [f.size(3) for f in features])
        # channels-last levels (channels-last convolutions) get channels-last gradients
        ctx.channels_last = channels_last_only(features[0])

    def backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        spatial_scales, ph, pw, sampling_ratio, aligned = ctx.args
        n, c = ctx.batch_channels
        heights, widths = ctx.sizes
        grads = torch.ops.pydetectron._roi_align_fpn_backward(
            grad, rois, levels, spatial_scales, ph, pw, n, c, heights, widths, sampling_ratio,
            aligned, ctx.channels_last)
        return list(grads), None, None, None, None, None, None, None

    torch.library.register_autograd("pydetectron::roi_align_fpn", backward,
                                    setup_context=setup_context)
