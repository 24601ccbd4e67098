"""ResNet / FPN bodies, RoI transforms, heads and the name registry, built from explicit arguments."""
import pytest
import torch

from pydetectron import ops
from pydetectron.modeling import registry
from pydetectron.modeling.FPN import FPN, get_min_max_levels
from pydetectron.modeling.ResNet import ResNet_convX_body, ResNetSpec
from pydetectron.modeling.fast_rcnn_heads import fast_rcnn_outputs, roi_Xconv1fc_gn_head
from pydetectron.modeling.keypoint_rcnn_heads import keypoint_outputs
from pydetectron.modeling.mask_rcnn_heads import mask_rcnn_fcn_head_v1upXconvs, mask_rcnn_outputs
from pydetectron.modeling.roi_xform import RoIFeatureTransform


def test_stride_placement_and_shapes():
    body = ResNet_convX_body((1, 1, 1), ResNetSpec(stride_1x1=True))
    assert body.res2[0].branch2a.stride == (1, 1)  # first block after the stem never strides
    assert body.res3[0].branch2a.stride == (2, 2) and body.res3[0].branch2b.stride == (1, 1)
    body = ResNet_convX_body((1, 1, 1), ResNetSpec(stride_1x1=False))
    assert body.res3[0].branch2a.stride == (1, 1) and body.res3[0].branch2b.stride == (2, 2)
    assert body.dim_out == 1024 and body.spatial_scale == 1. / 16.
    y = body(torch.randn(1, 3, 64, 48))
    assert y.shape == (1, 1024, 4, 3)


def test_res5_dilation_keeps_stride_16():
    body = ResNet_convX_body((1, 1, 1, 2), ResNetSpec(res5_dilation=2))
    assert body.res5[0].branch2b.dilation == (2, 2) and body.res5[0].branch2b.stride == (1, 1)
    assert body.spatial_scale == 1. / 16.
    assert body(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)


def test_resnext_groups_and_freezing():
    body = ResNet_convX_body((1, 2, 1), ResNetSpec(num_groups=32, width_per_group=8), freeze_at=2)
    conv = body.res2[0].branch2b
    assert conv.groups == 32 and conv.weight.shape == (256, 8, 3, 3)
    assert body.res4[0].branch2b.weight.shape == (1024, 32, 3, 3)
    assert not any(p.requires_grad for p in body.res1.parameters())
    assert not any(p.requires_grad for p in body.res2.parameters())
    assert body.res3[0].branch2a.weight.requires_grad
    assert not body.res3[0].branch2a_norm.weight.requires_grad  # frozen-BN affines never train
    with pytest.raises(ValueError, match="FREEZE_AT"):
        ResNet_convX_body((1, 1, 1), freeze_at=5)  # no res5 in a conv4 body


def test_gn_body_names():
    spec = ResNetSpec(trans_func="bottleneck_gn_transformation", stem_func="basic_gn_stem",
                      shortcut_func="basic_gn_shortcut")
    body = ResNet_convX_body((1, 1, 1), spec)
    mapping, orphans = body.detectron_weight_mapping()
    assert mapping["res1.conv1_norm.weight"] == "conv1_gn_s"
    assert mapping["res2.0.branch2b_norm.bias"] == "res2_0_branch2b_gn_b"
    assert mapping["res3.0.branch1_norm.weight"] == "res3_0_branch1_gn_s"
    assert isinstance(body.res2[0].branch2a_norm, torch.nn.GroupNorm)
    with pytest.raises(ValueError, match="RESNETS.TRANS_FUNC"):
        ResNetSpec(trans_func="bottleneck_bn_transformation")


def test_fpn_levels_p6_and_lateral_init():
    body = ResNet_convX_body((1, 1, 1, 1))
    fpn = FPN(body, fpn_dim=32, min_level=2, max_level=6, zero_init_lateral=True)
    x = torch.randn(1, 3, 64, 96)
    levels = fpn(x)
    assert [tuple(p.shape[-2:]) for p in levels] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert fpn.spatial_scale == [1 / 4., 1 / 8., 1 / 16., 1 / 32., 1 / 64.]
    # P6: Detectron's max pool of kernel 1, stride 2 over P5 (here of an even and an odd side)
    assert torch.equal(levels[4], torch.nn.functional.max_pool2d(levels[3], 1, stride=2))
    assert torch.all(fpn.inner[1].conv.weight == 0)  # ZERO_INIT_LATERAL
    with pytest.raises(ValueError, match="COARSEST_STRIDE"):
        fpn(torch.randn(1, 3, 72, 96))
    p2only = FPN(ResNet_convX_body((1, 1, 1, 1)), fpn_dim=32, P2only=True)
    assert p2only(x).shape == (1, 32, 16, 24) and p2only.spatial_scale == 1 / 4.


def test_fpn_extra_conv_levels_and_gn():
    body = ResNet_convX_body((1, 1, 1, 1))
    fpn = FPN(body, fpn_dim=32, min_level=3, max_level=7, extra_conv_levels=True, gn=(-1, 8, 1e-5))
    levels = fpn(torch.randn(1, 3, 128, 128))
    assert [p.shape[-1] for p in levels] == [16, 8, 4, 2, 1]  # P3..P7
    mapping, _ = fpn.detectron_weight_mapping()
    names = set(mapping.values())
    assert {"fpn_6_w", "fpn_6_b", "fpn_7_w"} <= names  # extra levels: plain convs from C5
    assert fpn.extra[0].conv.in_channels == 2048
    assert "fpn_inner_res5_2_sum_gn_s" not in names  # one block per stage here: res5_0_sum
    assert {"fpn_inner_res5_0_sum_w", "fpn_inner_res5_0_sum_gn_s", "fpn_res3_0_sum_gn_b",
            "fpn_inner_res4_0_sum_lateral_gn_b"} <= names
    assert "fpn_inner_res5_0_sum_b" not in names  # GN convs have no bias
    assert not any(n.startswith("fpn_inner_res2") for n in names)  # min level 3
    assert get_min_max_levels(True, True, (2, 6), (2, 5)) == (2, 6)
    assert get_min_max_levels(False, True, (2, 6), (3, 5)) == (3, 5)


def test_roi_transform_routes_rois_to_their_fpn_level():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 32 // 2 ** i, 32 // 2 ** i) for i in range(4)]  # P2..P5
    scales = [1 / 4., 1 / 8., 1 / 16., 1 / 32.]
    xform = RoIFeatureTransform("RoIAlign", 3, 2, scales, fpn_levels=(2, 5))
    rois = torch.tensor([[0., 0., 0., 20., 20.],     # small: level 2
                         [1., 0., 0., 127., 127.],   # 128 px: level 3
                         [0., 10., 10., 120., 100.],  # level 3
                         [1., 0., 0., 10., 10.]])
    out = xform(feats, rois)
    lvls = ops.map_rois_to_fpn_levels(rois, 2, 5)
    for i in range(4):
        k = int(lvls[i]) - 2
        ref = ops.roi_align(feats[k], rois[i:i + 1], (3, 3), scales[k], 2, aligned=False)
        torch.testing.assert_close(out[i:i + 1], ref)
    single = RoIFeatureTransform("RoIPoolF", 3, 0, 1 / 4.)
    torch.testing.assert_close(single(feats[0], rois), ops.roi_pool(feats[0], rois, (3, 3), 1 / 4.))
    crop = RoIFeatureTransform("RoICrop", 3, 0, 1 / 4., crop_resize_with_max_pool=True)
    torch.testing.assert_close(crop(feats[0], rois),
                               ops.roi_crop(feats[0], rois, (3, 3), 1 / 4., max_pool=True))
    with pytest.raises(ValueError, match="ROI_XFORM_METHOD"):
        RoIFeatureTransform("RoIWarp", 7, 0, 1 / 16.)


def test_heads_shapes_and_detectron_names():
    feats = torch.randn(1, 16, 8, 8)
    rois = torch.tensor([[0., 0., 0., 15., 15.], [0., 4., 4., 30., 20.]])
    box_head = roi_Xconv1fc_gn_head(16, RoIFeatureTransform("RoIAlign", 7, 2, 1 / 4.), 2, 32, 64,
                                    gn=(-1, 8, 1e-5))
    outs = fast_rcnn_outputs(64, 5, cls_agnostic_bbox_reg=True).eval()
    cls_prob, bbox_pred = outs(box_head(feats, rois))
    assert cls_prob.shape == (2, 5) and bbox_pred.shape == (2, 8)
    torch.testing.assert_close(cls_prob.sum(1), torch.ones(2))
    names = set(box_head.detectron_weight_mapping()[0].values())
    assert names == {"head_conv1_w", "head_conv1_gn_s", "head_conv1_gn_b", "head_conv2_w",
                     "head_conv2_gn_s", "head_conv2_gn_b", "fc6_w", "fc6_b"}
    mask_head = mask_rcnn_fcn_head_v1upXconvs(16, RoIFeatureTransform("RoIAlign", 7, 2, 1 / 4.), 2,
                                              8, dilation=2)
    assert mask_head.convs[0].conv.dilation == (2, 2)
    masks = mask_rcnn_outputs(8, 5, upsample_ratio=2)(mask_head(feats, rois))
    assert masks.shape == (2, 5, 28, 28)
    fc_masks = mask_rcnn_outputs(8, 5, cls_specific_mask=False, resolution=14,
                                 use_fc_output=True)(mask_head(feats, rois))
    assert fc_masks.shape == (2, 1, 14, 14)
    kps = keypoint_outputs(16, 17, use_deconv=True, deconv_dim=8, use_deconv_output=True,
                           up_scale=2)
    assert kps(torch.randn(2, 16, 14, 14)).shape == (2, 17, 112, 112)
    assert set(kps.detectron_weight_mapping()[0].values()) == {
        "kps_deconv_w", "kps_deconv_b", "kps_score_lowres_w", "kps_score_lowres_b", "kps_score_w",
        "kps_score_b"}


def test_registry_resolves_detectron_spellings_and_lists_valid_names():
    assert registry.CONV_BODY.get("FPN.add_fpn_ResNet50_conv5_body") is \
        registry.CONV_BODY.get("FPN.fpn_ResNet50_conv5_body")
    assert "head_builder.add_roi_2mlp_head" in registry.ROI_BOX_HEAD
    with pytest.raises(KeyError) as e:
        registry.ROI_MASK_HEAD.get("mask_rcnn_heads.mask_rcnn_fcn_head_v2")
    assert "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn" in str(e.value)
    assert "MRCNN.ROI_MASK_HEAD" in str(e.value)
    from pydetectron.core.config import CANONICAL_FUNC_NAMES
    for key, names in CANONICAL_FUNC_NAMES.items():  # every name the config accepts is built here
        family = {"MODEL.CONV_BODY": registry.CONV_BODY,
                  "FAST_RCNN.ROI_BOX_HEAD": registry.ROI_BOX_HEAD,
                  "MRCNN.ROI_MASK_HEAD": registry.ROI_MASK_HEAD,
                  "KRCNN.ROI_KEYPOINTS_HEAD": registry.ROI_KEYPOINTS_HEAD}[key]
        assert set(names) <= set(family.names()), key

