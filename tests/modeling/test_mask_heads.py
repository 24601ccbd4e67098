"""The res5 mask heads (v0upshare / v0up) take the res5 width from the backbone spec.

``conv5_mask`` reads the res5 stage's output, 8 x RESNETS.RES2_OUT_DIM channels: 2048 for
Detectron's ResNets, 512 for the thin backbone below (RES2_OUT_DIM 64).
"""
import os

import numpy as np
import pytest
import torch

from pydetectron.core.config import (
    assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list)
from pydetectron.modeling.mask_rcnn_heads import mask_rcnn_fcn_head_v0upshare
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.modeling.ResNet import ResNet_roi_conv5_head, ResNetSpec
from pydetectron.modeling.roi_xform import RoIFeatureTransform
from pydetectron.utils.detectron_weight_helper import detectron_blobs_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C4_MASK = os.path.join(ROOT, "configs", "baselines", "e2e_mask_rcnn_R-50-C4_1x.yaml")
THIN = ["RESNETS.STEM_OUT_DIM", 16, "RESNETS.RES2_OUT_DIM", 64, "RESNETS.NUM_GROUPS", 1,
        "RESNETS.WIDTH_PER_GROUP", 16, "MRCNN.DIM_REDUCED", 32, "MODEL.NUM_CLASSES", 3,
        "MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False,
        "TRAIN.RPN_PRE_NMS_TOP_N", 200, "TRAIN.RPN_POST_NMS_TOP_N", 30,
        "TRAIN.BATCH_SIZE_PER_IM", 16, "TRAIN.RPN_BATCH_SIZE_PER_IM", 32,
        "TEST.RPN_PRE_NMS_TOP_N", 60, "TEST.RPN_POST_NMS_TOP_N", 6,
        "TEST.DETECTIONS_PER_IM", 3, "TEST.SCORE_THRESH", 0.0]


def _square(x1, y1, x2, y2):
    """A loader-style polygon (blob scale, float32) tracing the box."""
    return [np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float32)]


def _roidb():
    boxes = [[4., 6., 40., 50.], [30., 10., 60., 30.]]
    return [{"boxes": torch.tensor(boxes), "gt_classes": torch.tensor([1, 2]),
             "is_crowd": torch.tensor([False, False]),
             "segms": [_square(*b) for b in boxes]}]


@pytest.mark.parametrize("mask_head,shared", [
    ("mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare", True),
    ("mask_rcnn_heads.mask_rcnn_fcn_head_v0up", False)])
def test_thin_c4_mask_rcnn_trains_and_detects(mask_head, shared, fresh_cfg):
    merge_cfg_from_file(C4_MASK)
    merge_cfg_from_list(THIN + ["MRCNN.ROI_MASK_HEAD", mask_head])
    assert_and_infer_cfg()
    assert cfg.MODEL.SHARE_RES5 == shared  # inferred from the head
    torch.manual_seed(0)
    model = Generalized_RCNN()
    res5 = model.Box_Head.res5 if shared else model.Mask_Head.head.res5
    assert res5.dim_out == 512 and (getattr(model.Mask_Head, "res5", None) is res5) == shared
    assert model.Mask_Head.upconv5.weight.shape == (512, 32, 2, 2)  # (in, out, kh, kw)
    blobs = {name: blob for name, _, blob in detectron_blobs_of(model)}
    assert blobs["Mask_Head.upconv5.weight"] == "conv5_mask_w"
    if not shared:
        assert blobs["Mask_Head.head.res5.0.branch2a.weight"] == "_[mask]_res5_0_branch2a_w"

    gen = torch.Generator().manual_seed(0)
    data = torch.randn(1, 3, 64, 64, generator=gen) * 50.
    im_info = torch.tensor([[64., 64., 1.]])
    out = model.train()(data, im_info, _roidb())
    assert "loss_mask" in out["losses"]
    total = sum(out["losses"].values())
    assert torch.isfinite(total)
    total.backward()
    grad = model.Mask_Head.upconv5.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        dets = model.detect(data, im_info)
    n = dets[0]["boxes"].shape[0]  # ties at the DETECTIONS_PER_IM-th score may keep a few more
    assert n > 0 and dets[0]["masks"].shape == (n, 14, 14)
    assert torch.all((dets[0]["masks"] >= 0) & (dets[0]["masks"] <= 1))


def test_v0upshare_builds_conv5_mask_for_the_shared_stage():
    xform = RoIFeatureTransform("RoIAlign", 14, 0, 1 / 16.)
    box_head = ResNet_roi_conv5_head(128, xform, ResNetSpec(width_per_group=8, res2_out_dim=32))
    head = mask_rcnn_fcn_head_v0upshare(xform, dim_reduced=16)
    with pytest.raises(RuntimeError, match="share_res5_module"):
        head(torch.randn(1, 128, 8, 8), torch.tensor([[0., 0., 0., 60., 60.]]))
    assert head.detectron_weight_mapping() == ({}, [])
    head.share_res5_module(box_head.res5)
    assert head.upconv5.weight.shape == (256, 16, 2, 2) and head.res5 is box_head.res5
    # conv5_mask is registered before res5, as when it was built in __init__
    assert list(head.state_dict())[:2] == ["upconv5.weight", "upconv5.bias"]
    feats = torch.randn(1, 128, 8, 8)
    rois = torch.tensor([[0., 0., 0., 60., 60.], [0., 16., 8., 100., 90.]])
    assert head(feats, rois).shape == (2, 16, 14, 14)
    mapping, _ = head.detectron_weight_mapping()
    assert mapping["upconv5.weight"] == "conv5_mask_w"
    assert mapping["res5.0.branch2a.weight"] == "res5_0_branch2a_w"

    with pytest.raises(ValueError, match="512 channels but conv5_mask was built for 256"):
        head.share_res5_module(ResNet_roi_conv5_head(128, xform, ResNetSpec(
            width_per_group=8, res2_out_dim=64)).res5)
    with pytest.raises(TypeError, match="res5 must be the box head's ResNet.ResStage"):
        mask_rcnn_fcn_head_v0upshare(xform).share_res5_module(torch.nn.Identity())
