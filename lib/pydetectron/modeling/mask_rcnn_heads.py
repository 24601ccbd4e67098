"""Mask R-CNN mask heads and their output (Detectron's ``mask_rcnn_heads.py``).

    ... -> RoI -> RoIFeatureTransform -> mask head -> mask_rcnn_outputs -> (R, C, M, M) logits

Shapes: R RoIs, M = MRCNN.RESOLUTION, C = MODEL.NUM_CLASSES (1 without MRCNN.CLS_SPECIFIC_MASK).

Heads (blob names are Detectron's, brackets included):
- ``mask_rcnn_fcn_head_v1up4convs`` / ``_v1up``: 4 / 2 x (3x3 conv ``_[mask]_fcn<i>``, dilation
  MRCNN.DILATION, ReLU), then the 2x2 stride-2 transposed conv ``conv5_mask`` + ReLU.
- ``mask_rcnn_fcn_head_v1up4convs_gn``: the same with GroupNorm (``_mask_fcn<i>``, no conv bias).
  Detectron pads these convs by MRCNN.DILATION without dilating them; kept as is (the GN configs
  set DILATION 1, where it makes no difference).
- ``mask_rcnn_fcn_head_v0upshare``: the box head's res5 stage (same weights) on the mask RoIs, then
  ``conv5_mask`` (C4 models). ``mask_rcnn_fcn_head_v0up``: its own res5 (``_[mask]_res5_*``).
Inits: MRCNN.CONV_INIT with std 0.001 (Gaussian) for convs and ``conv5_mask`` (v0up: Gaussian).
"""
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.heads_common import ConvStack
from pydetectron.modeling.registry import ROI_MASK_HEAD
from pydetectron.modeling.roi_xform import RoIFeatureTransform
from pydetectron.modeling.weight_mapping import blob_mapping, merge_mappings
from pydetectron.nn.init import init_layer
from pydetectron.nn.upsample import BilinearInterpolation2d

__all__ = ["mask_rcnn_outputs", "mask_rcnn_fcn_head_v1upXconvs", "mask_rcnn_fcn_head_v0upshare",
           "mask_rcnn_fcn_head_v0up"]


class mask_rcnn_outputs(nn.Module):
    """Mask logits ``mask_fcn_logits``: (R, dim_in, M', M') -> (R, C, M, M) (sigmoid at test time
    is applied by the model's ``mask_net``)."""

    def __init__(self, dim_in, num_classes, cls_specific_mask=True, resolution=14,
                 upsample_ratio=1, use_fc_output=False, conv_init="GaussianFill"):
        super().__init__()
        self.num_cls = num_classes if cls_specific_mask else 1
        self.resolution = resolution
        self.use_fc_output = use_fc_output
        self.upsample = None
        if use_fc_output:
            # Predict the masks with an fc layer on the flattened head output
            dim_fc = int(dim_in * (resolution / upsample_ratio) ** 2)
            self.classify = init_layer(nn.Linear(dim_fc, self.num_cls * resolution ** 2),
                                       "GaussianFill", 0.001)
        else:
            # Class-agnostic masks use GaussianFill: fan-in based fills can diverge there
            fill = conv_init if cls_specific_mask else "GaussianFill"
            self.classify = init_layer(nn.Conv2d(dim_in, self.num_cls, 1), fill, 0.001)
            if upsample_ratio > 1:
                self.upsample = BilinearInterpolation2d(self.num_cls, self.num_cls, upsample_ratio)

    def forward(self, x):
        if self.use_fc_output:
            x = self.classify(x.flatten(1))
            return x.view(-1, self.num_cls, self.resolution, self.resolution)
        x = self.classify(x)
        return self.upsample(x) if self.upsample is not None else x

    def detectron_weight_mapping(self):
        names = {"classify": "mask_fcn_logits"}
        if self.upsample is not None:
            names["upsample"] = "mask_fcn_logits_up"
        return blob_mapping(self, names), []


class mask_rcnn_fcn_head_v1upXconvs(nn.Module):
    """RoI transform -> num_convs x (3x3 conv [-> GN] -> ReLU) -> conv5_mask (2x up) -> ReLU.

    (R, dim_in, S, S) -> (R, dim_reduced, 2S, 2S); ``gn`` = (dim_per_gp, num_groups, eps) or None.
    """

    def __init__(self, dim_in, roi_xform, num_convs=4, dim_reduced=256, dilation=2,
                 conv_init="GaussianFill", gn=None):
        super().__init__()
        self.roi_xform = roi_xform
        if gn is None:
            self.convs = ConvStack(dim_in, dim_reduced, num_convs, "_[mask]_fcn%d",
                                   padding=dilation, dilation=dilation, weight_fill=conv_init,
                                   std=0.001)
        else:
            # Detectron's GN variant pads by the dilation but does not dilate (see above)
            self.convs = ConvStack(dim_in, dim_reduced, num_convs, "_mask_fcn%d",
                                   padding=dilation, weight_fill=conv_init, std=0.001, gn=gn)
        self.use_gn = gn is not None
        self.upconv5 = init_layer(nn.ConvTranspose2d(self.convs.dim_out, dim_reduced, 2, stride=2),
                                  conv_init, 0.001)
        self.dim_out = dim_reduced

    def forward(self, blob_conv, rois):
        x = self.convs(self.roi_xform(blob_conv, rois))
        return F.relu(self.upconv5(x), inplace=True)

    def detectron_weight_mapping(self):
        mapping = blob_mapping(self, {"upconv5": "conv5_mask"})
        mapping.update(merge_mappings({"convs": self.convs})[0])
        return mapping, []


class mask_rcnn_fcn_head_v0upshare(nn.Module):
    """RoI transform -> the box head's res5 stage -> conv5_mask (2x up) -> ReLU.

    The res5 stage is the box head's own module (``share_res5_module``), so its weights are the
    ``res5_*`` blobs; Detectron recomputes it on the mask RoIs at test time. ``conv5_mask`` takes
    the res5 width (8 x RESNETS.RES2_OUT_DIM, 2048 by default), so ``share_res5_module`` builds it.
    """

    def __init__(self, roi_xform, dim_reduced=256, conv_init="GaussianFill"):
        super().__init__()
        self.roi_xform = roi_xform
        self.upconv5 = None  # (res5 width, dim_reduced, 2, 2): built by share_res5_module
        self.res5 = None
        self.dim_reduced = dim_reduced
        self.conv_init = conv_init
        self.dim_out = dim_reduced

    def share_res5_module(self, res5):
        """Use the box head's ``res5`` (a ``ResNet.ResStage``, with ``dim_out``) for the masks."""
        dim_in = getattr(res5, "dim_out", None)
        if not isinstance(dim_in, int) or dim_in <= 0:
            raise TypeError("mask_rcnn_fcn_head_v0upshare.share_res5_module: res5 must be the box "
                            "head's ResNet.ResStage (with an int dim_out), got %s"
                            % type(res5).__name__)
        if self.upconv5 is None:
            # Registered before res5, as when conv5_mask was built in __init__: same parameter
            # order, and the same random stream as long as nothing runs between the two calls.
            self.upconv5 = init_layer(nn.ConvTranspose2d(dim_in, self.dim_reduced, 2, stride=2),
                                      self.conv_init, 0.001)
        elif self.upconv5.in_channels != dim_in:
            raise ValueError("mask_rcnn_fcn_head_v0upshare.share_res5_module: res5 outputs %d "
                             "channels but conv5_mask was built for %d"
                             % (dim_in, self.upconv5.in_channels))
        self.res5 = res5

    def forward(self, blob_conv, rois):
        self._check_shared()
        return self.forward_from_res5(self.res5(self.roi_xform(blob_conv, rois)))

    def forward_from_res5(self, res5_feat):
        """conv5_mask on res5 features already computed (training shares them with the box head)."""
        self._check_shared()
        return F.relu(self.upconv5(res5_feat), inplace=True)

    def _check_shared(self):
        if self.res5 is None:
            raise RuntimeError("mask_rcnn_fcn_head_v0upshare: call "
                               "share_res5_module(box_head.res5) before use")

    def detectron_weight_mapping(self):
        if self.res5 is None:  # nothing built yet beyond the (parameter-free) RoI transform
            return {}, []
        mapping = blob_mapping(self, {"upconv5": "conv5_mask"})
        res5_map, _ = merge_mappings({"res5": self.res5})  # the box head's blob names
        mapping.update(res5_map)
        return mapping, []


class mask_rcnn_fcn_head_v0up(nn.Module):
    """RoI transform -> its own res5 stage (``_[mask]_res5_*``) -> conv5_mask (2x up) -> ReLU."""

    def __init__(self, dim_in, roi_xform, spec=None, dilation=1, dim_reduced=256):
        super().__init__()
        from pydetectron.modeling.ResNet import ResNet_roi_conv5_head
        # Detectron's add_ResNet_roi_conv5_head_for_masks: bottleneck width 512, MRCNN.DILATION
        self.head = ResNet_roi_conv5_head(dim_in, roi_xform, spec, dim_inner=512,
                                          dilation=dilation, prefix="_[mask]_res")
        # conv5_mask takes the res5 width: 8 x RESNETS.RES2_OUT_DIM (2048 by default)
        self.upconv5 = init_layer(nn.ConvTranspose2d(self.head.dim_out, dim_reduced, 2, stride=2),
                                  "GaussianFill", 0.001)
        self.dim_out = dim_reduced

    def forward(self, blob_conv, rois):
        return F.relu(self.upconv5(self.head.forward_res5(blob_conv, rois)), inplace=True)

    def detectron_weight_mapping(self):
        mapping, orphans = merge_mappings({"head": self.head})
        mapping.update(blob_mapping(self, {"upconv5": "conv5_mask"}))
        return mapping, orphans


def _mrcnn_cfg():
    from pydetectron.core.config import cfg
    return cfg


def _v1upXconvs_from_cfg(dim_in, spatial_scale, num_convs, use_gn=False):
    cfg = _mrcnn_cfg()
    gn = None
    if use_gn:
        gn = (cfg.GROUP_NORM.DIM_PER_GP, cfg.GROUP_NORM.NUM_GROUPS, cfg.GROUP_NORM.EPSILON)
    return mask_rcnn_fcn_head_v1upXconvs(
        dim_in, RoIFeatureTransform.from_cfg("MRCNN", spatial_scale), num_convs,
        cfg.MRCNN.DIM_REDUCED, cfg.MRCNN.DILATION, cfg.MRCNN.CONV_INIT, gn)


@ROI_MASK_HEAD.register("mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs")
def mask_rcnn_fcn_head_v1up4convs(dim_in, spatial_scale):
    return _v1upXconvs_from_cfg(dim_in, spatial_scale, 4)


@ROI_MASK_HEAD.register("mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn")
def mask_rcnn_fcn_head_v1up4convs_gn(dim_in, spatial_scale):
    return _v1upXconvs_from_cfg(dim_in, spatial_scale, 4, use_gn=True)


@ROI_MASK_HEAD.register("mask_rcnn_heads.mask_rcnn_fcn_head_v1up")
def mask_rcnn_fcn_head_v1up(dim_in, spatial_scale):
    return _v1upXconvs_from_cfg(dim_in, spatial_scale, 2)


@ROI_MASK_HEAD.register("mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare")
def _v0upshare_from_cfg(dim_in, spatial_scale):
    cfg = _mrcnn_cfg()
    if cfg.MRCNN.ROI_XFORM_RESOLUTION != cfg.FAST_RCNN.ROI_XFORM_RESOLUTION:
        raise ValueError("mask_rcnn_fcn_head_v0upshare shares res5 with the box head, so "
                         "MRCNN.ROI_XFORM_RESOLUTION (%d) must equal "
                         "FAST_RCNN.ROI_XFORM_RESOLUTION (%d)"
                         % (cfg.MRCNN.ROI_XFORM_RESOLUTION, cfg.FAST_RCNN.ROI_XFORM_RESOLUTION))
    if cfg.MRCNN.DILATION != 1:
        raise ValueError("mask_rcnn_fcn_head_v0upshare reuses the box head's undilated res5, so "
                         "MRCNN.DILATION must be 1 (Detectron's C4 mask configs set it), got %d"
                         % cfg.MRCNN.DILATION)
    return mask_rcnn_fcn_head_v0upshare(RoIFeatureTransform.from_cfg("MRCNN", spatial_scale),
                                        cfg.MRCNN.DIM_REDUCED, cfg.MRCNN.CONV_INIT)


@ROI_MASK_HEAD.register("mask_rcnn_heads.mask_rcnn_fcn_head_v0up")
def _v0up_from_cfg(dim_in, spatial_scale):
    from pydetectron.modeling.ResNet import ResNetSpec
    cfg = _mrcnn_cfg()
    return mask_rcnn_fcn_head_v0up(dim_in, RoIFeatureTransform.from_cfg("MRCNN", spatial_scale),
                                   ResNetSpec.from_cfg(), cfg.MRCNN.DILATION, cfg.MRCNN.DIM_REDUCED)
