"""Feature Pyramid Network bodies, built as Detectron's ``modeling/FPN.py``.

The pyramid starts at the coarsest backbone stage (res5): a 1x1 "inner" conv ``fpn_inner_res5_2_sum``,
then for each finer stage a lateral 1x1 conv ``fpn_inner_<stage>_lateral`` summed with the 2x
nearest upsampling of the level above; a 3x3 conv ``fpn_<stage>`` makes each output level. Above
res5, P6 is P5 subsampled by a stride-2 max pool of kernel 1 (the FPN paper), or, with
``FPN.EXTRA_CONV_LEVELS`` (RetinaNet), stride-2 3x3 convs ``fpn_6``, ``fpn_7`` starting from C5.
With ``FPN.USE_GN`` the inner, lateral and output convs lose their bias and gain a GroupNorm
(``<conv>_gn``). Every FPN conv is XavierFill (the laterals zero with ``FPN.ZERO_INIT_LATERAL``).

Levels: the pyramid spans ``get_min_max_levels()`` (2..6 for Mask R-CNN); the outputs are returned
**finest level first** (P2, P3, ..., P6), each (N, FPN.DIM, H / 2^k, W / 2^k).
"""
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling import ResNet
from pydetectron.modeling.registry import CONV_BODY
from pydetectron.modeling.weight_mapping import blob_mapping, merge_mappings
from pydetectron.nn.group_norm import GroupNorm
from pydetectron.nn.init import ConstantFill, XavierFill

__all__ = ["FPN", "FPNConv", "get_min_max_levels", "LOWEST_BACKBONE_LVL", "HIGHEST_BACKBONE_LVL"]

# FPN assumes 5 reductions by 2: level 2 is "conv2"-like (stride 4), level 5 is "conv5" (stride 32)
LOWEST_BACKBONE_LVL = 2
HIGHEST_BACKBONE_LVL = 5


def get_min_max_levels(multilevel_rpn, multilevel_rois, rpn_levels=(2, 6), roi_levels=(2, 5)):
    """The pyramid levels (min, max) the RPN and/or the RoI heads need (Detectron's rule)."""
    min_level, max_level = LOWEST_BACKBONE_LVL, HIGHEST_BACKBONE_LVL
    if multilevel_rpn and not multilevel_rois:
        min_level, max_level = rpn_levels
    if not multilevel_rpn and multilevel_rois:
        min_level, max_level = roi_levels
    if multilevel_rpn and multilevel_rois:
        min_level = min(rpn_levels[0], roi_levels[0])
        max_level = max(rpn_levels[1], roi_levels[1])
    return min_level, max_level


class FPNConv(nn.Module):
    """A conv of the pyramid: Conv (+ bias) or, with GroupNorm, Conv (no bias) -> GN.

    Blob names: ``<blob>_w`` / ``<blob>_b``, or ``<blob>_w`` + ``<blob>_gn_s`` / ``<blob>_gn_b``.
    """

    def __init__(self, blob, dim_in, dim_out, kernel, stride=1, gn=None, zero_init=False):
        super().__init__()
        self.blob = blob
        self.conv = nn.Conv2d(dim_in, dim_out, kernel, stride=stride, padding=kernel // 2,
                              bias=gn is None)
        if zero_init:
            ConstantFill(self.conv.weight, 0.0)
        else:
            XavierFill(self.conv.weight)
        if self.conv.bias is not None:
            ConstantFill(self.conv.bias, 0.0)
        self.gn = GroupNorm(dim_out, *gn) if gn is not None else None

    def forward(self, x):
        x = self.conv(x)
        return self.gn(x) if self.gn is not None else x

    def detectron_weight_mapping(self):
        layers = {"conv": self.blob}
        if self.gn is not None:
            layers["gn"] = self.blob + "_gn"
        return blob_mapping(self, layers), []


class FPN(nn.Module):
    """A ResNet conv5 body with the pyramid on top.

    forward: (N, 3, H, W) -> [P_min, ..., P_max] (finest first), or P_min alone when ``P2only``.
    H and W must be multiples of the coarsest backbone stride (32): the top-down sums need exact
    2x sizes, which is why Detectron pads its blobs to ``FPN.COARSEST_STRIDE``.
    """

    def __init__(self, conv_body, fpn_dim=256, min_level=2, max_level=6, extra_conv_levels=False,
                 zero_init_lateral=False, gn=None, P2only=False):
        super().__init__()
        if len(conv_body.stage_names) != 4:
            raise ValueError("FPN needs a conv5 body (4 stages), got stages %s"
                             % (conv_body.stage_names,))
        self.conv_body = conv_body
        self.fpn_dim = fpn_dim
        self.min_level, self.max_level = min_level, max_level
        self.extra_conv_levels = extra_conv_levels
        self.P2only = P2only
        # Backbone stages coarsest first: res5, res4, res3, res2 (fewer if min_level > 2)
        stage_blobs = conv_body.stage_output_blobs[::-1]
        stage_dims = conv_body.stage_dims[::-1]
        stage_scales = conv_body.stage_spatial_scales[::-1]
        self.num_backbone_stages = len(stage_blobs) - (min_level - LOWEST_BACKBONE_LVL)
        n = self.num_backbone_stages
        # inner[0]: 1x1 on the coarsest stage; inner[i > 0]: the lateral 1x1 of stage i
        inner = [FPNConv("fpn_inner_" + stage_blobs[0], stage_dims[0], fpn_dim, 1, gn=gn)]
        for i in range(1, n):
            inner.append(FPNConv("fpn_inner_%s_lateral" % stage_blobs[i], stage_dims[i], fpn_dim, 1,
                                 gn=gn, zero_init=zero_init_lateral))
        self.inner = nn.ModuleList(inner)
        self.posthoc = nn.ModuleList(
            [FPNConv("fpn_" + stage_blobs[i], fpn_dim, fpn_dim, 3, gn=gn) for i in range(n)])
        spatial_scales = list(stage_scales[:n])  # coarsest first
        self.extra = nn.ModuleList()
        self.p6_from_maxpool = False
        if not extra_conv_levels and max_level == HIGHEST_BACKBONE_LVL + 1:
            self.p6_from_maxpool = True  # P6 = P5 subsampled (max pool, kernel 1, stride 2)
            spatial_scales.insert(0, spatial_scales[0] * 0.5)
        if extra_conv_levels and max_level > HIGHEST_BACKBONE_LVL:
            dim_in = stage_dims[0]  # the extra levels start from C5, not P5
            for lvl in range(HIGHEST_BACKBONE_LVL + 1, max_level + 1):
                self.extra.append(FPNConv("fpn_%d" % lvl, dim_in, fpn_dim, 3, stride=2))
                dim_in = fpn_dim
                spatial_scales.insert(0, spatial_scales[0] * 0.5)
        self.dim_out = fpn_dim
        levels_scales = spatial_scales[::-1]  # finest first
        self.spatial_scale = levels_scales[0] if P2only else levels_scales

    def forward(self, x):
        stages = self.conv_body.forward_stages(x)[::-1]  # coarsest first: C5, C4, C3, C2
        n = self.num_backbone_stages
        top = self.inner[0](stages[0])
        inners = [top]
        for i in range(1, n):
            lateral = self.inner[i](stages[i])
            if lateral.shape[-2:] != (2 * top.shape[-2], 2 * top.shape[-1]):
                raise ValueError(
                    "FPN: level sizes %s and %s do not differ by exactly 2x; pad the input blob "
                    "to a multiple of FPN.COARSEST_STRIDE (32), got input %s"
                    % (tuple(top.shape[-2:]), tuple(lateral.shape[-2:]), tuple(x.shape[-2:])))
            top = lateral + F.interpolate(top, scale_factor=2, mode="nearest")
            inners.append(top)
        outs = [self.posthoc[i](inners[i]) for i in range(n)]  # coarsest first
        if self.p6_from_maxpool:
            # Detectron's P6: a max pool of kernel 1 and stride 2 over P5, i.e. every other row
            # and column. Taken as a strided view: the same values and gradients, and under
            # torch.compile's dynamic shapes no guard on the parity of P5's size (the pool's
            # output-size rule branches on it: a recompilation per parity on real data).
            outs.insert(0, outs[0][:, :, ::2, ::2])
        if len(self.extra) > 0:
            y = stages[0]
            for i, conv in enumerate(self.extra):
                y = conv(y if i == 0 else F.relu(y))
                outs.insert(0, y)
        outs = outs[::-1]  # finest first
        return outs[0] if self.P2only else outs

    def detectron_weight_mapping(self):
        parts = {"conv_body": self.conv_body}
        parts.update({"inner.%d" % i: m for i, m in enumerate(self.inner)})
        parts.update({"posthoc.%d" % i: m for i, m in enumerate(self.posthoc)})
        parts.update({"extra.%d" % i: m for i, m in enumerate(self.extra)})
        return merge_mappings(parts)


def _fpn_from_cfg(block_counts, P2only=False):
    from pydetectron.core.config import cfg
    conv_body = ResNet.ResNet_convX_body(block_counts, ResNet.ResNetSpec.from_cfg(),
                                         freeze_at=cfg.RESNETS.FREEZE_AT)
    min_level, max_level = get_min_max_levels(
        cfg.FPN.MULTILEVEL_RPN, cfg.FPN.MULTILEVEL_ROIS,
        (cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL), (cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL))
    gn = None
    if cfg.FPN.USE_GN:
        gn = (cfg.GROUP_NORM.DIM_PER_GP, cfg.GROUP_NORM.NUM_GROUPS, cfg.GROUP_NORM.EPSILON)
    return FPN(conv_body, cfg.FPN.DIM, min_level, max_level, cfg.FPN.EXTRA_CONV_LEVELS,
               cfg.FPN.ZERO_INIT_LATERAL, gn, P2only)


@CONV_BODY.register("FPN.fpn_ResNet_conv5_body")
def fpn_ResNet_conv5_body():
    """FPN on a conv5 ResNet of any depth and width (RESNETS.BLOCK_COUNTS, STEM_OUT_DIM,
    RES2_OUT_DIM): the thin backbones of the CPU quick start."""
    return _fpn_from_cfg(ResNet.block_counts_from_cfg())


@CONV_BODY.register("FPN.fpn_ResNet50_conv5_body")
def fpn_ResNet50_conv5_body():
    return _fpn_from_cfg((3, 4, 6, 3))


@CONV_BODY.register("FPN.fpn_ResNet50_conv5_P2only_body")
def fpn_ResNet50_conv5_P2only_body():
    return _fpn_from_cfg((3, 4, 6, 3), P2only=True)


@CONV_BODY.register("FPN.fpn_ResNet101_conv5_body")
def fpn_ResNet101_conv5_body():
    return _fpn_from_cfg((3, 4, 23, 3))


@CONV_BODY.register("FPN.fpn_ResNet101_conv5_P2only_body")
def fpn_ResNet101_conv5_P2only_body():
    return _fpn_from_cfg((3, 4, 23, 3), P2only=True)


@CONV_BODY.register("FPN.fpn_ResNet152_conv5_body")
def fpn_ResNet152_conv5_body():
    return _fpn_from_cfg((3, 8, 36, 3))


@CONV_BODY.register("FPN.fpn_ResNet152_conv5_P2only_body")
def fpn_ResNet152_conv5_P2only_body():
    return _fpn_from_cfg((3, 8, 36, 3), P2only=True)
