"""RoIFeatureTransform: pool a fixed-size feature for each RoI, from one map or an FPN pyramid.

Detectron's ``DetectionModelHelper.RoIFeatureTransform``: ``method`` is ``RoIPoolF`` (RoI max
pooling), ``RoIAlign`` (without the half-pixel shift, ``aligned=False``) or ``RoICrop``
(Detectron.pytorch's crop-and-resize through a sampling grid). With a pyramid, each RoI is pooled
from the level ``pydetectron.ops.map_rois_to_fpn_levels`` gives it (Detectron's FPN distribute
step), and the pooled features come back in the order of the input RoIs.

Shapes: rois (R, 5) = (batch index, x1, y1, x2, y2) in the input-blob scale;
output (R, C, resolution, resolution).
"""
import torch
from torch import nn

__all__ = ["RoIFeatureTransform", "ROI_XFORM_METHODS"]

ROI_XFORM_METHODS = ("RoIPoolF", "RoIAlign", "RoICrop")


class RoIFeatureTransform(nn.Module):
    """Pool (R, C, S, S) RoI features (S = ``resolution``) from ``blob_conv``.

    ``spatial_scale`` is a float for one feature map, or a list (finest level first) for an FPN
    pyramid whose levels are ``fpn_levels = (k_min, k_max)``; ``blob_conv`` is then the list of
    level maps, finest first.
    """

    def __init__(self, method, resolution, sampling_ratio, spatial_scale, fpn_levels=None,
                 canonical_scale=224, canonical_level=4, crop_resize_with_max_pool=True):
        super().__init__()
        if method not in ROI_XFORM_METHODS:
            raise ValueError("unknown ROI_XFORM_METHOD %r; valid: %s"
                             % (method, ", ".join(ROI_XFORM_METHODS)))
        self.method = method
        self.resolution = int(resolution)
        self.sampling_ratio = int(sampling_ratio)
        self.crop_resize_with_max_pool = crop_resize_with_max_pool
        self.multilevel = isinstance(spatial_scale, (list, tuple))
        if self.multilevel:
            if fpn_levels is None:
                raise ValueError("RoIFeatureTransform: fpn_levels (k_min, k_max) is required with "
                                 "a list of spatial scales")
            k_min, k_max = fpn_levels
            if len(spatial_scale) != k_max - k_min + 1:
                raise ValueError("RoIFeatureTransform: %d spatial scales for FPN levels %d..%d"
                                 % (len(spatial_scale), k_min, k_max))
            self.fpn_levels = (int(k_min), int(k_max))
            self.spatial_scale = [float(s) for s in spatial_scale]
        else:
            self.fpn_levels = None
            self.spatial_scale = float(spatial_scale)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    @classmethod
    def from_cfg(cls, prefix, spatial_scale):
        """Build from ``cfg.<prefix>.ROI_XFORM_*`` (prefix: FAST_RCNN, MRCNN or KRCNN) and the FPN
        keys."""
        from pydetectron.core.config import cfg
        c = cfg[prefix]
        return cls(c.ROI_XFORM_METHOD, c.ROI_XFORM_RESOLUTION, c.ROI_XFORM_SAMPLING_RATIO,
                   spatial_scale, fpn_levels=(cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL),
                   canonical_scale=cfg.FPN.ROI_CANONICAL_SCALE,
                   canonical_level=cfg.FPN.ROI_CANONICAL_LEVEL,
                   crop_resize_with_max_pool=cfg.CROP_RESIZE_WITH_MAX_POOL)

    def forward(self, blob_conv, rois):
        from pydetectron import ops
        rois = rois.to(dtype=torch.float32)
        s = self.resolution
        if not self.multilevel:
            if self.method == "RoIAlign":
                return ops.roi_align(blob_conv, rois, (s, s), self.spatial_scale,
                                     self.sampling_ratio, aligned=False)
            if self.method == "RoIPoolF":
                return ops.roi_pool(blob_conv, rois, (s, s), self.spatial_scale)
            return ops.roi_crop(blob_conv, rois, (s, s), self.spatial_scale,
                                max_pool=self.crop_resize_with_max_pool)
        k_min, k_max = self.fpn_levels
        if len(blob_conv) != k_max - k_min + 1:
            raise ValueError("RoIFeatureTransform: %d feature maps for FPN levels %d..%d"
                             % (len(blob_conv), k_min, k_max))
        # ops.fpn_roi_transform takes the levels coarsest first (Detectron's order)
        return ops.fpn_roi_transform(
            list(blob_conv)[::-1], rois, (s, s), self.spatial_scale[::-1], self.sampling_ratio,
            self.method, k_min, k_max, self.canonical_scale, self.canonical_level, aligned=False,
            crop_max_pool=self.crop_resize_with_max_pool)

    def extra_repr(self):
        return "method=%s, resolution=%d, sampling_ratio=%d, spatial_scale=%s, fpn_levels=%s" % (
            self.method, self.resolution, self.sampling_ratio, self.spatial_scale, self.fpn_levels)
