"""bfloat16 autocast (--amp): proposals, losses and post-processing stay in float32 geometry."""
import os

import pytest
import torch

from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, merge_cfg_from_list
from pydetectron.modeling.model_builder import Generalized_RCNN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(ROOT, "configs", "gn_baselines", "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml")


def _model(fresh_cfg, train):
    merge_cfg_from_file(CFG)
    merge_cfg_from_list(["MODEL.NUM_CLASSES", 4, "TEST.RPN_PRE_NMS_TOP_N", 200,
                         "TRAIN.RPN_PRE_NMS_TOP_N", 200, "TRAIN.BATCH_SIZE_PER_IM", 32])
    assert_and_infer_cfg(make_immutable=False)
    torch.manual_seed(0)
    model = Generalized_RCNN()
    return model.train() if train else model.eval()


def test_detect_under_bf16_autocast(fresh_cfg):
    model = _model(fresh_cfg, train=False)
    x = torch.randn(2, 3, 128, 160)
    info = torch.tensor([[128., 160., 1.], [128., 160., 1.]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        res = model.detect(x, info)
    assert len(res) == 2
    for r in res:
        assert r["boxes"].dtype == torch.float32 and r["scores"].dtype == torch.float32
        assert torch.isfinite(r["boxes"]).all()
        assert r["masks"].shape[0] == r["boxes"].shape[0]


def test_training_step_under_bf16_autocast(fresh_cfg):
    model = _model(fresh_cfg, train=True)
    x = torch.randn(1, 3, 128, 128)
    info = torch.tensor([[128., 128., 1.]])
    poly = [[20., 20., 90., 20., 90., 90., 20., 90.]]
    roidb = [{
        "boxes": torch.tensor([[20., 20., 90., 90.]]), "gt_boxes": torch.tensor([[20., 20., 90., 90.]]),
        "gt_classes": torch.tensor([2]), "is_crowd": torch.tensor([False]),
        "box_to_gt_ind_map": torch.tensor([0]), "segms": [[torch.tensor(p).numpy() for p in poly]],
    }]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, info, roidb)
    total = sum(out["losses"].values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
