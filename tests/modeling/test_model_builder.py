"""Generalized_RCNN from every shipped config: builds on CPU and runs inference on a random image."""
import glob
import os

import pytest
import torch

from pydetectron.core.config import (
    assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list, reset_cfg)
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.utils.detectron_weight_helper import detectron_blobs_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (RetinaNet configs have no RoIs: tests/modeling/test_retinanet_model.py covers them)
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**",
                                                                          "*.yaml"), recursive=True)
                 if "retinanet" not in os.path.basename(p))
SMALL_TEST = ["TEST.RPN_PRE_NMS_TOP_N", 60, "TEST.RPN_POST_NMS_TOP_N", 4,
              "TEST.DETECTIONS_PER_IM", 3, "TEST.SCORE_THRESH", 0.0,
              "MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False]


# every test starts from the default cfg and leaves the global cfg as it found it (conftest)
pytestmark = pytest.mark.usefixtures("fresh_cfg")


def build(config, extra=()):
    merge_cfg_from_file(os.path.join(ROOT, config))
    merge_cfg_from_list(SMALL_TEST + list(extra))
    assert_and_infer_cfg()
    torch.manual_seed(0)
    return Generalized_RCNN().eval()


def random_blob(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g) * 5.  # small enough that no RPN score saturates


@pytest.mark.parametrize("config", ["configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
                                    "configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml"])
def test_the_padded_test_front_gives_the_forward_of_the_unpadded_proposals(config):
    """``test_front`` (test_net's --front_graphs: padded proposals, no host synchronisation) on
    a model whose NMS leaves fewer proposals than its fixed rows: the padding rows come last and
    ``front_outputs`` drops them, leaving the unpadded forward's rois, scores and deltas."""
    model = build(config, ["TEST.RPN_PRE_NMS_TOP_N", 200, "TEST.RPN_POST_NMS_TOP_N", 300,
                           "TEST.RPN_NMS_THRESH", 0.3])
    data, im_info = random_blob(1, 128, 192), torch.tensor([[128., 192., 0.5]])
    with torch.no_grad():
        assert not model.uses_test_front(data)              # by default: the unpadded path
        want = model(data, im_info)
        front = model.test_front(data, im_info)
        model.padded_test_front = True
        assert model.uses_test_front(data) and not model.uses_test_front(data.repeat(2, 1, 1, 1))
        got = model(data, im_info)
    valid = front[-4]
    n = want["rois"].shape[0]
    # fixed rows: FPN's collect keeps 300, C4's NMS keeps at most 300 of its 200 candidates
    assert valid.shape == (300 if cfg.FPN.FPN_ON else 200,)
    assert 0 < n < valid.shape[0] and valid[:n].all() and not valid[n:].any()
    for k in ("rois", "cls_score", "cls_logits", "bbox_pred"):
        assert torch.equal(got[k], want[k]), k
        assert torch.equal(front[("rois", "valid", "cls_score", "cls_logits",
                                  "bbox_pred").index(k) - 5][:n], want[k]), k
    levels = want["blob_conv"] if cfg.FPN.FPN_ON else [want["blob_conv"]]
    got_levels = got["blob_conv"] if cfg.FPN.FPN_ON else [got["blob_conv"]]
    assert len(front) == len(levels) + 5
    assert all(torch.equal(a, b) for a, b in zip(got_levels, levels))


def test_configs_are_found():
    assert len(CONFIGS) >= 30 and any("gn_baselines" in c for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_and_runs_inference(config):
    model = build(config)
    heavy = "X-1" in config
    h, w = (64, 64) if heavy else (64, 96)
    data = random_blob(1, h, w)
    im_info = torch.tensor([[h, w, 0.5]])
    with torch.no_grad():
        out = model(data, im_info)
        dets = model.detect(data, im_info)
    rois = out["rois"]
    assert rois.dim() == 2 and rois.shape[1] == 5 and 0 < rois.shape[0] <= 4
    assert torch.all(rois[:, 0] == 0)
    assert torch.all(rois[:, 1:3] >= 0)
    assert torch.all(rois[:, 3] <= w - 1) and torch.all(rois[:, 4] <= h - 1)
    c = cfg.MODEL.NUM_CLASSES
    assert out["cls_score"].shape == (rois.shape[0], c)
    torch.testing.assert_close(out["cls_score"].sum(1), torch.ones(rois.shape[0]))
    assert out["bbox_pred"].shape == (rois.shape[0], 8 if cfg.MODEL.CLS_AGNOSTIC_BBOX_REG else 4 * c)
    if cfg.FPN.FPN_ON:
        assert isinstance(out["blob_conv"], list) and len(out["blob_conv"]) == 4  # P2..P5
        assert out["blob_conv"][0].shape[-2:] == (h // 4, w // 4)
    else:
        assert out["blob_conv"].shape[-2:] == (h // 16, w // 16)
    assert len(dets) == 1
    d = dets[0]
    n = d["boxes"].shape[0]
    assert 0 < n <= 3 and d["scores"].shape == (n,) and torch.all(d["classes"] >= 1)
    # boxes come back in the original image (blob / im_scale = 128 x 192 or 128 x 128)
    assert torch.all(d["boxes"][:, 2] <= 2 * w - 1) and torch.all(d["boxes"][:, 3] <= 2 * h - 1)
    if cfg.MODEL.MASK_ON:
        m = cfg.MRCNN.RESOLUTION
        assert d["masks"].shape == (n, m, m)
        assert torch.all((d["masks"] >= 0) & (d["masks"] <= 1))
    if cfg.MODEL.KEYPOINTS_ON:
        s = cfg.KRCNN.HEATMAP_SIZE
        assert d["keypoint_heatmaps"].shape == (n, cfg.KRCNN.NUM_KEYPOINTS, s, s)
    # every tensor has exactly one Detectron blob name
    blob_names = [b for _, _, b in detectron_blobs_of(model)]
    assert len(blob_names) == len(set(blob_names))


def test_batch_equals_images_one_at_a_time():
    model = build("configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
                  ["TEST.RPN_POST_NMS_TOP_N", 6, "TEST.DETECTIONS_PER_IM", 4])
    data = random_blob(2, 64, 96, seed=1)
    im_info = torch.tensor([[64., 96., 1.], [64., 80., 2.]])
    with torch.no_grad():
        both = model(data, im_info)
        dets = model.detect(data, im_info)
        body = model.conv_body_only(data)
        assert len(body) == 4 and all(torch.equal(a, b) for a, b in zip(body, both["blob_conv"]))
        for i in range(2):
            one = model(data[i:i + 1], im_info[i:i + 1])
            sel = both["rois"][:, 0] == i
            # equal up to float32 rounding (convolutions sum in another order for a batch)
            close = dict(rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(both["rois"][sel][:, 1:], one["rois"][:, 1:], **close)
            torch.testing.assert_close(both["cls_score"][sel], one["cls_score"], **close)
            torch.testing.assert_close(both["bbox_pred"][sel], one["bbox_pred"], **close)
            det = model.detect(data[i:i + 1], im_info[i:i + 1])[0]
            for key in ("boxes", "scores", "classes", "masks"):
                torch.testing.assert_close(dets[i][key], det[key], **close)


def test_rpn_only_and_precomputed_proposals():
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml",
                  ["MODEL.RPN_ONLY", True, "MODEL.FASTER_RCNN", False])
    assert model.Box_Head is None
    with torch.no_grad():
        out = model(random_blob(1, 64, 64), torch.tensor([[64., 64., 1.]]))
    assert set(out) == {"blob_conv", "rois", "rpn_roi_probs"}
    assert out["rpn_roi_probs"].shape == (out["rois"].shape[0],)
    assert torch.all(out["rpn_roi_probs"][:-1] >= out["rpn_roi_probs"][1:])

    reset_cfg()
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml", ["MODEL.FASTER_RCNN", False])
    assert model.RPN is None
    rois = torch.tensor([[0., 0., 0., 30., 30.], [0., 10., 5., 60., 40.]])
    with torch.no_grad():
        out = model(random_blob(1, 64, 64), torch.tensor([[64., 64., 1.]]), rois=rois)
        assert torch.equal(out["rois"], rois) and out["cls_score"].shape == (2, 81)
        dets = model.detect(random_blob(1, 64, 64), torch.tensor([[64., 64., 1.]]), rois=rois)
        assert dets[0]["boxes"].shape[0] > 0
        with pytest.raises(ValueError, match="precomputed proposals"):
            model(random_blob(1, 64, 64), torch.tensor([[64., 64., 1.]]))


def test_softmax_rpn_has_two_logits_per_anchor():
    model = build("configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml",
                  ["RPN.CLS_ACTIVATION", "softmax"])
    assert model.RPN.rpn.rpn_cls_logits.out_channels == 6
    with torch.no_grad():
        out = model(random_blob(1, 64, 64), torch.tensor([[64., 64., 1.]]))
    assert out["rois"].shape[0] > 0


def test_training_runs_rpn_then_calls_the_loss_hook(monkeypatch):
    model = build("configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
                  ["TRAIN.RPN_PRE_NMS_TOP_N", 50, "TRAIN.RPN_POST_NMS_TOP_N", 7]).train()
    seen = {}

    def hook(blob_conv, rpn_ret, im_info, roidb, rois=None):
        seen.update(blob_conv=blob_conv, rpn_ret=rpn_ret, roidb=roidb)
        return {"losses": {}, "metrics": {}}

    monkeypatch.setattr(model, "training_losses", hook)
    im_info = torch.tensor([[64., 64., 1.], [64., 64., 1.]])
    model(random_blob(2, 64, 64), im_info, roidb=[{}, {}])
    assert len(seen["blob_conv"]) == 4 and len(seen["rpn_ret"]["rpn_cls_logits"]) == 5
    # The proposals come after the RPN targets (training_losses adds them: their count syncs)
    assert "rpn_rois" not in seen["rpn_ret"]
    model.RPN.add_proposals(seen["rpn_ret"], im_info)
    assert seen["rpn_ret"]["rpn_rois"].shape[0] == 7  # TRAIN top-N of the whole minibatch
    monkeypatch.undo()
    # Without the monkeypatch the hook is the real one: it needs the collated ground truth.
    assert model.training_losses.__func__ is Generalized_RCNN.training_losses


def test_clear_errors_for_bad_input():
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    with pytest.raises(ValueError, match="im_info"):
        model(random_blob(2, 64, 64), torch.tensor([[64., 64., 1.]]))
    with pytest.raises(ValueError, match="data"):
        model(torch.zeros(1, 64, 64), torch.tensor([[64., 64., 1.]]))
    reset_cfg()
    merge_cfg_from_file(os.path.join(ROOT, "configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml"))
    merge_cfg_from_list(["MODEL.NUM_CLASSES", -1])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        Generalized_RCNN()
