"""ResNet and ResNeXt bodies and the res5 RoI box head, built as Detectron's ``modeling/ResNet.py``.

Shapes: N images, R RoIs, (H, W) spatial sizes.

Detectron's conventions in force:
- Stages are named res2..res5 and blocks ``res<stage>_<i>``; the three convs of a bottleneck are
  ``branch2a`` (1x1), ``branch2b`` (3x3, grouped for ResNeXt), ``branch2c`` (1x1) and the projection
  shortcut is ``branch1``; each conv is followed by an AffineChannel (``_bn``) or GroupNorm (``_gn``).
  The stem is ``conv1`` + ``res_conv1_bn`` (or ``conv1_gn``) + 3x3/2 max pool.
- A stage strides (by ``stride_init``, in its first block) only when it changes the width and is
  not dilated; res2 never strides (the stem's max pool already did). ``RESNETS.STRIDE_1X1`` puts the
  stride on the first 1x1 (MSRA models) rather than on the 3x3 (Caffe2 / Torch models).
- Widths: the stem has ``RESNETS.STEM_OUT_DIM`` channels (64), res2 outputs ``RESNETS.RES2_OUT_DIM``
  (256) and the bottleneck NUM_GROUPS * WIDTH_PER_GROUP; both double per stage. Detectron hardcodes
  64 and 256; smaller values make the thin backbones of the CPU quick start.
- Depth: the ResNet50/101/152 bodies fix their blocks per stage; ``ResNet.ResNet_conv5_body`` and
  ``FPN.fpn_ResNet_conv5_body`` take them from ``RESNETS.BLOCK_COUNTS`` ((3, 4, 6, 3): ResNet-50).
- ``RESNETS.FREEZE_AT`` = k freezes the stem and res2..res<k> (Detectron's StopGradient after res<k>);
  the AffineChannel scales and biases never train (Detectron.pytorch).
"""
from collections import namedtuple

import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.registry import CONV_BODY, ROI_BOX_HEAD
from pydetectron.modeling.weight_mapping import blob_mapping, merge_mappings
from pydetectron.nn.affine import (AffineChannel2d, conv_norm_add_relu, conv_norm_relu,
                                   conv_then_norm, freeze_affine_channels)
from pydetectron.nn.group_norm import GroupNorm
from pydetectron.nn.init import XavierFill

__all__ = ["ResNetSpec", "ResNet_convX_body", "ResStage", "ResidualBlock", "ResNetStem",
           "ResNet_roi_conv5_head", "stage_blob_prefix", "block_counts_from_cfg"]

STEM_FUNCS = ("basic_bn_stem", "basic_gn_stem")
TRANS_FUNCS = ("bottleneck_transformation", "bottleneck_gn_transformation")
SHORTCUT_FUNCS = ("basic_bn_shortcut", "basic_gn_shortcut")


class ResNetSpec(namedtuple("ResNetSpec", [
        "num_groups", "width_per_group", "stride_1x1", "trans_func", "stem_func", "shortcut_func",
        "res5_dilation", "gn_dim_per_gp", "gn_num_groups", "gn_eps", "stem_out_dim",
        "res2_out_dim"])):
    """The ``RESNETS.*`` / ``GROUP_NORM.*`` options a ResNet part needs (no global cfg inside)."""

    def __new__(cls, num_groups=1, width_per_group=64, stride_1x1=True,
                trans_func="bottleneck_transformation", stem_func="basic_bn_stem",
                shortcut_func="basic_bn_shortcut", res5_dilation=1, gn_dim_per_gp=-1,
                gn_num_groups=32, gn_eps=1e-5, stem_out_dim=64, res2_out_dim=256):
        for value, valid, key in ((trans_func, TRANS_FUNCS, "RESNETS.TRANS_FUNC"),
                                  (stem_func, STEM_FUNCS, "RESNETS.STEM_FUNC"),
                                  (shortcut_func, SHORTCUT_FUNCS, "RESNETS.SHORTCUT_FUNC")):
            if value not in valid:
                raise ValueError("unknown %s %r; valid: %s" % (key, value, ", ".join(valid)))
        for value, key in ((num_groups, "RESNETS.NUM_GROUPS"),
                           (width_per_group, "RESNETS.WIDTH_PER_GROUP"),
                           (stem_out_dim, "RESNETS.STEM_OUT_DIM"),
                           (res2_out_dim, "RESNETS.RES2_OUT_DIM")):
            if not isinstance(value, int) or value < 1:
                raise ValueError("%s must be a positive int, got %r" % (key, value))
        return super().__new__(cls, num_groups, width_per_group, stride_1x1, trans_func, stem_func,
                               shortcut_func, res5_dilation, gn_dim_per_gp, gn_num_groups, gn_eps,
                               stem_out_dim, res2_out_dim)

    @classmethod
    def from_cfg(cls):
        from pydetectron.core.config import cfg
        return cls(num_groups=cfg.RESNETS.NUM_GROUPS, width_per_group=cfg.RESNETS.WIDTH_PER_GROUP,
                   stride_1x1=cfg.RESNETS.STRIDE_1X1, trans_func=cfg.RESNETS.TRANS_FUNC,
                   stem_func=cfg.RESNETS.STEM_FUNC, shortcut_func=cfg.RESNETS.SHORTCUT_FUNC,
                   res5_dilation=cfg.RESNETS.RES5_DILATION,
                   gn_dim_per_gp=cfg.GROUP_NORM.DIM_PER_GP, gn_num_groups=cfg.GROUP_NORM.NUM_GROUPS,
                   gn_eps=cfg.GROUP_NORM.EPSILON, stem_out_dim=cfg.RESNETS.STEM_OUT_DIM,
                   res2_out_dim=cfg.RESNETS.RES2_OUT_DIM)

    @property
    def dim_bottleneck(self):
        return self.num_groups * self.width_per_group

    def norm(self, use_gn, dim):
        """The normalisation after a conv: (module, blob suffix)."""
        if use_gn:
            return GroupNorm(dim, self.gn_dim_per_gp, self.gn_num_groups, self.gn_eps), "_gn"
        return AffineChannel2d(dim), "_bn"


def _conv(dim_in, dim_out, kernel, stride=1, padding=0, dilation=1, groups=1):
    # Detectron's ResNet convs have no bias (AffineChannel / GroupNorm carries it); XavierFill.
    conv = nn.Conv2d(dim_in, dim_out, kernel, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=False)
    XavierFill(conv.weight)
    return conv


def stage_blob_prefix(stage, index, prefix="res"):
    """Detectron's block prefix, e.g. ``res4_5`` (``prefix`` is ``_[mask]_res`` in mask heads)."""
    return "%s%d_%d" % (prefix, stage, index)


class ResNetStem(nn.Module):
    """conv1 7x7/2 -> AffineChannel or GroupNorm -> ReLU -> max pool 3x3/2.

    (N, 3, H, W) -> (N, stem_out_dim, H/4, W/4); stem_out_dim is 64 in Detectron.
    """

    def __init__(self, spec):
        super().__init__()
        self.use_gn = spec.stem_func == "basic_gn_stem"
        self.dim_out = spec.stem_out_dim
        self.conv1 = _conv(3, self.dim_out, 7, stride=2, padding=3)
        self.conv1_norm, suffix = spec.norm(self.use_gn, self.dim_out)
        # Detectron: AffineChannel 'res_conv1_bn' (BN stem) or ConvGN prefix 'conv1' -> 'conv1_gn'.
        self._norm_blob = "conv1_gn" if self.use_gn else "res_conv1_bn"

    def forward(self, x):
        x = conv_norm_relu(x, self.conv1, self.conv1_norm)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    def detectron_weight_mapping(self):
        # The ImageNet BN files also carry conv1_b (the MSRA Caffe conv1 had a bias Detectron
        # never uses) and the fc1000 / pred classifier.
        orphans = [] if self.use_gn else ["conv1_b"]
        return blob_mapping(self, {"conv1": "conv1", "conv1_norm": self._norm_blob}), orphans


class ResidualBlock(nn.Module):
    """Bottleneck block ``<prefix>``: relu(branch2(x) + branch1(x)), branch1 = x when dims match.

    (N, dim_in, H, W) -> (N, dim_out, H / stride, W / stride).
    """

    def __init__(self, prefix, dim_in, dim_out, dim_inner, stride, dilation, spec):
        super().__init__()
        self.prefix = prefix
        self.stride = stride
        str1x1, str3x3 = (stride, 1) if spec.stride_1x1 else (1, stride)
        gn_trans = spec.trans_func == "bottleneck_gn_transformation"
        self.branch2a = _conv(dim_in, dim_inner, 1, stride=str1x1)
        self.branch2a_norm, sa = spec.norm(gn_trans, dim_inner)
        self.branch2b = _conv(dim_inner, dim_inner, 3, stride=str3x3, padding=dilation,
                              dilation=dilation, groups=spec.num_groups)
        self.branch2b_norm, sb = spec.norm(gn_trans, dim_inner)
        self.branch2c = _conv(dim_inner, dim_out, 1)
        self.branch2c_norm, sc = spec.norm(gn_trans, dim_out)
        blobs = {"branch2a": prefix + "_branch2a", "branch2a_norm": prefix + "_branch2a" + sa,
                 "branch2b": prefix + "_branch2b", "branch2b_norm": prefix + "_branch2b" + sb,
                 "branch2c": prefix + "_branch2c", "branch2c_norm": prefix + "_branch2c" + sc}
        if dim_in != dim_out:
            self.branch1 = _conv(dim_in, dim_out, 1, stride=stride)
            self.branch1_norm, s1 = spec.norm(spec.shortcut_func == "basic_gn_shortcut", dim_out)
            blobs.update({"branch1": prefix + "_branch1", "branch1_norm": prefix + "_branch1" + s1})
        else:
            self.branch1 = None
        self._blobs = blobs

    def forward(self, x):
        # conv_then_norm folds a frozen AffineChannel into its conv (one kernel fewer per conv).
        y = conv_norm_relu(x, self.branch2a, self.branch2a_norm)
        y = conv_norm_relu(y, self.branch2b, self.branch2b_norm)
        shortcut = x if self.branch1 is None else conv_then_norm(x, self.branch1, self.branch1_norm)
        # relu(branch2c's norm + shortcut), the sum in place on the fresh normalised output
        return conv_norm_add_relu(y, self.branch2c, self.branch2c_norm, shortcut)

    def detectron_weight_mapping(self):
        return blob_mapping(self, self._blobs), []


class ResStage(nn.Sequential):
    """``n`` residual blocks ``<prefix><stage>_0 .. _<n-1>``; only a width-changing first block
    strides, by ``stride_init`` (1 for the stage right after the stem)."""

    def __init__(self, stage, n, dim_in, dim_out, dim_inner, dilation, spec, stride_init=2,
                 prefix="res"):
        blocks = []
        for i in range(n):
            # Detectron's rule: stride only where the width changes and never in a dilated stage.
            # (Detectron also tests dim_in != 64 to spare res2, whose input the stem has already
            # pooled; the body passes stride_init=1 for res2 instead, which stays right when
            # RESNETS.STEM_OUT_DIM / RES2_OUT_DIM make other stages start at 64 channels.)
            stride = stride_init if (dim_in != dim_out and dilation == 1) else 1
            blocks.append(ResidualBlock(stage_blob_prefix(stage, i, prefix), dim_in, dim_out,
                                        dim_inner, stride, dilation, spec))
            dim_in = dim_out
        super().__init__(*blocks)
        self.dim_out = dim_out
        self.output_blob = stage_blob_prefix(stage, n - 1, prefix) + "_sum"

    def detectron_weight_mapping(self):
        return merge_mappings({str(i): b for i, b in enumerate(self)})


class ResNet_convX_body(nn.Module):
    """ResNet from the image up to res4 (``len(block_counts) == 3``) or res5 (4 stages).

    forward: (N, 3, H, W) -> (N, dim_out, H * spatial_scale, W * spatial_scale);
    ``forward_stages`` returns every stage output [res2, res3, res4(, res5)] (for FPN).
    """

    def __init__(self, block_counts, spec=None, freeze_at=2):
        super().__init__()
        spec = spec if spec is not None else ResNetSpec()
        if len(block_counts) not in (3, 4):
            raise ValueError("block_counts must give 3 (conv4) or 4 (conv5) stages, got %r"
                             % (block_counts,))
        if freeze_at not in (0, 2, 3, 4, 5) or freeze_at > len(block_counts) + 1:
            raise ValueError("RESNETS.FREEZE_AT must be one of 0, 2, 3, 4, 5 and at most the last "
                             "stage (res%d) of this body, got %r" % (len(block_counts) + 1, freeze_at))
        self.block_counts = tuple(block_counts)
        if any(not isinstance(n, int) or n < 1 for n in block_counts):
            raise ValueError("block_counts must be positive ints (blocks per stage), got %r"
                             % (block_counts,))
        self.res1 = ResNetStem(spec)
        dim_in, dim_inner = self.res1.dim_out, spec.dim_bottleneck
        self.stage_names = []
        self.stage_dims = []
        for k, n in enumerate(block_counts):
            stage = k + 2
            dilation = spec.res5_dilation if stage == 5 else 1
            res = ResStage(stage, n, dim_in, spec.res2_out_dim * 2 ** k, dim_inner * 2 ** k,
                           dilation, spec, stride_init=1 if stage == 2 else 2)
            self.add_module("res%d" % stage, res)
            self.stage_names.append("res%d" % stage)
            self.stage_dims.append(res.dim_out)
            dim_in = res.dim_out
        self.dim_out = dim_in
        # Detectron: 1/16 for conv4 bodies, 1/32 * RES5_DILATION for conv5 bodies.
        self.spatial_scale = 1. / 16. if len(block_counts) == 3 else 1. / 32. * spec.res5_dilation
        self.stage_spatial_scales = [1. / 4., 1. / 8., 1. / 16., self.spatial_scale][:len(block_counts)]
        self.stage_output_blobs = [getattr(self, s).output_blob for s in self.stage_names]
        self.freeze_at = freeze_at
        self._freeze()

    def _freeze(self):
        # The frozen-BN affines never train (Detectron.pytorch; RESNETS.FREEZE_AT's doc), and
        # FREEZE_AT = k freezes the stem and res2..res<k> (Detectron's StopGradient after res<k>).
        freeze_affine_channels(self)
        for name in ["res%d" % s for s in range(1, self.freeze_at + 1)]:
            if hasattr(self, name):
                for p in getattr(self, name).parameters():
                    p.requires_grad = False

    def forward_stages(self, x):
        x = self.res1(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.forward_stages(x)[-1]

    def detectron_weight_mapping(self):
        mapping, orphans = merge_mappings(
            {name: getattr(self, name) for name in ["res1"] + self.stage_names})
        # The ImageNet classifier of the backbone files (Caffe conversion: fc1000; Caffe2: pred).
        return mapping, orphans + ["fc1000_w", "fc1000_b", "pred_w", "pred_b"]


def _body_from_cfg(block_counts):
    from pydetectron.core.config import cfg
    return ResNet_convX_body(block_counts, ResNetSpec.from_cfg(), freeze_at=cfg.RESNETS.FREEZE_AT)


def block_counts_from_cfg():
    """RESNETS.BLOCK_COUNTS, checked: four positive ints (res2..res5)."""
    from pydetectron.core.config import cfg
    counts = tuple(cfg.RESNETS.BLOCK_COUNTS)
    if len(counts) != 4 or any(not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError("RESNETS.BLOCK_COUNTS must be 4 positive ints (blocks in res2..res5), "
                         "got %r" % (cfg.RESNETS.BLOCK_COUNTS,))
    return counts


@CONV_BODY.register("ResNet.ResNet_conv5_body")
def ResNet_conv5_body():
    """A conv5 ResNet of any depth: RESNETS.BLOCK_COUNTS blocks in res2..res5."""
    return _body_from_cfg(block_counts_from_cfg())


@CONV_BODY.register("ResNet.ResNet50_conv4_body")
def ResNet50_conv4_body():
    return _body_from_cfg((3, 4, 6))


@CONV_BODY.register("ResNet.ResNet50_conv5_body")
def ResNet50_conv5_body():
    return _body_from_cfg((3, 4, 6, 3))


@CONV_BODY.register("ResNet.ResNet101_conv4_body")
def ResNet101_conv4_body():
    return _body_from_cfg((3, 4, 23))


@CONV_BODY.register("ResNet.ResNet101_conv5_body")
def ResNet101_conv5_body():
    return _body_from_cfg((3, 4, 23, 3))


@CONV_BODY.register("ResNet.ResNet152_conv5_body")
def ResNet152_conv5_body():
    return _body_from_cfg((3, 8, 36, 3))


class ResNet_roi_conv5_head(nn.Module):
    """RoI transform -> res5 stage (3 blocks) -> 7x7 average pool: (R, 2048, 1, 1) by default.

    ``roi_xform`` pools (R, dim_in, S, S) features (S = ROI_XFORM_RESOLUTION); the first block
    strides by S // 7 so the stage ends at 7x7; its width is 8 x RES2_OUT_DIM (2048) like a body's
    res5. ``prefix`` is ``res`` for the box head; the mask and
    keypoint variants use ``_[mask]_res`` / ``_[pose]_res`` with ``dim_inner`` 512 and their own
    ``dilation`` (Detectron hardcodes both there).
    """

    def __init__(self, dim_in, roi_xform, spec=None, dim_inner=None, dilation=1, prefix="res"):
        super().__init__()
        spec = spec if spec is not None else ResNetSpec()
        self.roi_xform = roi_xform
        dim_inner = dim_inner if dim_inner is not None else spec.dim_bottleneck * 8
        stride_init = roi_xform.resolution // 7
        dim_out = spec.res2_out_dim * 8
        self.res5 = ResStage(5, 3, dim_in, dim_out, dim_inner, dilation, spec,
                             stride_init=stride_init, prefix=prefix)
        self.dim_out = dim_out
        freeze_affine_channels(self)

    def forward_res5(self, blob_conv, rois):
        """(R, 2048, S', S') res5 features of the RoIs (before the average pool)."""
        return self.res5(self.roi_xform(blob_conv, rois))

    def forward(self, blob_conv, rois):
        # Caffe2 AveragePool(kernel=7) with its default stride 1: (R, 2048, 7, 7) -> (R, 2048, 1, 1)
        return F.avg_pool2d(self.forward_res5(blob_conv, rois), kernel_size=7, stride=1)

    def detectron_weight_mapping(self):
        return merge_mappings({"res5": self.res5})


@ROI_BOX_HEAD.register("ResNet.ResNet_roi_conv5_head")
def _ResNet_roi_conv5_head_from_cfg(dim_in, spatial_scale):
    from pydetectron.modeling.roi_xform import RoIFeatureTransform
    return ResNet_roi_conv5_head(dim_in, RoIFeatureTransform.from_cfg("FAST_RCNN", spatial_scale),
                                 ResNetSpec.from_cfg())
