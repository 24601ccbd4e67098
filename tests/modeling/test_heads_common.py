"""heads_common.ConvStack, and the state-dict layout of the heads built on it (Detectron names)."""
import pytest
import torch
import torch.nn.functional as F

from pydetectron.modeling.fast_rcnn_heads import roi_Xconv1fc_gn_head, roi_Xconv1fc_head
from pydetectron.modeling.heads_common import ConvStack
from pydetectron.modeling.keypoint_rcnn_heads import roi_pose_head_v1convX
from pydetectron.modeling.mask_rcnn_heads import mask_rcnn_fcn_head_v1upXconvs
from pydetectron.modeling.roi_xform import RoIFeatureTransform


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_hand_values_one_conv_relu():
    # all-ones 3x3 kernel on a 2-channel all-ones 4x4 input, padding 1: each output sums the
    # in-image taps -- 2 x 4 at a corner, 2 x 6 on an edge, 2 x 9 inside -- plus the bias; ReLU
    # clips the channel whose bias makes everything negative.
    stack = ConvStack(2, 2, 1, "c%d", weight_fill="ConstantFill", nested=False)
    with torch.no_grad():
        stack[0].weight.fill_(1.)
        stack[0].bias.copy_(torch.tensor([0.5, -20.]))
    out = stack(torch.ones(1, 2, 4, 4))
    expect = torch.tensor([[8., 12., 12., 8.], [12., 18., 18., 12.], [12., 18., 18., 12.],
                           [8., 12., 12., 8.]]) + 0.5
    torch.testing.assert_close(out[0, 0], expect)
    assert torch.equal(out[0, 1], torch.zeros(4, 4))


def test_nested_gn_stack_equals_its_composition_and_names():
    torch.manual_seed(0)
    stack = ConvStack(6, 8, 2, "_mask_fcn%d", padding=2, weight_fill="MSRAFill", gn=(-1, 4, 1e-5))
    with torch.no_grad():  # non-trivial GN affines so that they matter below
        for layer in stack:
            layer.gn.weight.uniform_(0.5, 1.5)
            layer.gn.bias.uniform_(-0.5, 0.5)
    assert _shapes(stack) == {"0.conv.weight": (8, 6, 3, 3), "0.gn.weight": (8,),
                              "0.gn.bias": (8,), "1.conv.weight": (8, 8, 3, 3),
                              "1.gn.weight": (8,), "1.gn.bias": (8,)}
    x = torch.randn(3, 6, 7, 7)
    ref = x
    for layer in stack:
        # padding 2 without dilation (Detectron's GN mask head): each conv grows the map by 2
        ref = F.conv2d(ref, layer.conv.weight, None, padding=2)
        ref = F.relu(F.group_norm(ref, 4, layer.gn.weight, layer.gn.bias, 1e-5))
    out = stack(x)
    assert out.shape == (3, 8, 11, 11)
    torch.testing.assert_close(out, ref)
    mapping, orphans = stack.detectron_weight_mapping()
    assert orphans == [] and mapping == {
        "0.conv.weight": "_mask_fcn1_w", "0.gn.weight": "_mask_fcn1_gn_s",
        "0.gn.bias": "_mask_fcn1_gn_b", "1.conv.weight": "_mask_fcn2_w",
        "1.gn.weight": "_mask_fcn2_gn_s", "1.gn.bias": "_mask_fcn2_gn_b"}


def test_flat_dilated_stack_geometry_init_and_names():
    torch.manual_seed(0)
    stack = ConvStack(4, 64, 3, "conv_fcn%d", kernel_size=3, dilation=2,
                      weight_fill="GaussianFill", std=0.001, nested=False)
    conv = stack[1]
    assert conv.dilation == (2, 2) and conv.padding == (2, 2)  # default padding keeps H, W
    assert stack(torch.randn(2, 4, 9, 5)).shape == (2, 64, 9, 5)
    assert torch.equal(conv.bias, torch.zeros(64))
    assert abs(conv.weight.std().item() - 0.001) < 1e-4  # 36,864 Gaussian draws
    assert stack.detectron_weight_mapping()[0] == {
        "%d.%s" % (i, p): "conv_fcn%d_%s" % (i + 1, p[0]) for i in range(3)
        for p in ("weight", "bias")}
    assert stack.dim_out == 64 and ConvStack(5, 64, 0, "x%d").dim_out == 5


def test_bad_arguments_name_them():
    with pytest.raises(ValueError, match="gn"):
        ConvStack(4, 8, 2, "c%d", gn=(-1, 4, 1e-5), nested=False)
    with pytest.raises(ValueError, match="blob"):
        ConvStack(4, 8, 2, "head_conv")
    with pytest.raises(ValueError, match="num_convs"):
        ConvStack(4, 8, -1, "c%d")


def test_heads_keep_their_parameter_and_blob_names():
    """The layouts Detectron weights and older checkpoints are loaded into (written out by hand:
    a change to any of these names breaks loading)."""
    xform = RoIFeatureTransform("RoIAlign", 7, 2, 1 / 4.)
    box = roi_Xconv1fc_head(16, xform, num_convs=2, conv_dim=8, fc_dim=32)
    assert _shapes(box) == {"convs.0.conv.weight": (8, 16, 3, 3), "convs.0.conv.bias": (8,),
                            "convs.1.conv.weight": (8, 8, 3, 3), "convs.1.conv.bias": (8,),
                            "fc6.weight": (32, 8 * 7 * 7), "fc6.bias": (32,)}
    assert box.detectron_weight_mapping()[0]["convs.1.conv.bias"] == "head_conv2_b"
    box_gn = roi_Xconv1fc_gn_head(16, xform, 1, 8, 32, gn=(-1, 4, 1e-5))
    assert sorted(box_gn.detectron_weight_mapping()[0].items()) == [
        ("convs.0.conv.weight", "head_conv1_w"), ("convs.0.gn.bias", "head_conv1_gn_b"),
        ("convs.0.gn.weight", "head_conv1_gn_s"), ("fc6.bias", "fc6_b"), ("fc6.weight", "fc6_w")]

    mask = mask_rcnn_fcn_head_v1upXconvs(16, xform, num_convs=2, dim_reduced=8, dilation=2)
    assert mask.convs[0].conv.dilation == (2, 2) and mask.convs[0].conv.padding == (2, 2)
    assert sorted(mask.detectron_weight_mapping()[0].items()) == [
        ("convs.0.conv.bias", "_[mask]_fcn1_b"), ("convs.0.conv.weight", "_[mask]_fcn1_w"),
        ("convs.1.conv.bias", "_[mask]_fcn2_b"), ("convs.1.conv.weight", "_[mask]_fcn2_w"),
        ("upconv5.bias", "conv5_mask_b"), ("upconv5.weight", "conv5_mask_w")]
    mask_gn = mask_rcnn_fcn_head_v1upXconvs(16, xform, 1, 8, dilation=1, gn=(-1, 4, 1e-5))
    assert sorted(mask_gn.detectron_weight_mapping()[0].values()) == [
        "_mask_fcn1_gn_b", "_mask_fcn1_gn_s", "_mask_fcn1_w", "conv5_mask_b", "conv5_mask_w"]

    kps = roi_pose_head_v1convX(16, xform, num_convs=2, hidden_dim=8, kernel_size=3)
    assert _shapes(kps) == {"conv_fcn.0.weight": (8, 16, 3, 3), "conv_fcn.0.bias": (8,),
                            "conv_fcn.1.weight": (8, 8, 3, 3), "conv_fcn.1.bias": (8,)}
    assert kps.detectron_weight_mapping()[0]["conv_fcn.1.weight"] == "conv_fcn2_w"
    feats = torch.randn(1, 16, 8, 8)
    rois = torch.tensor([[0., 0., 0., 15., 15.], [0., 4., 4., 30., 20.]])
    assert kps(feats, rois).shape == (2, 8, 7, 7) and kps.dim_out == 8
    assert mask(feats, rois).shape == (2, 8, 14, 14)
    assert box(feats, rois).shape == (2, 32)
