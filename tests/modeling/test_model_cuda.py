"""The model on a CUDA device gives what it gives on the CPU (same weights, same image).

Runs only where CUDA and the CUDA build of the extension exist (``cuda`` marker).
"""
import copy
import os

import pytest
import torch

from pydetectron.core.config import (
    assert_and_infer_cfg, merge_cfg_from_file, merge_cfg_from_list, reset_cfg)
from pydetectron.modeling.model_builder import Generalized_RCNN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(config):
    reset_cfg()
    try:
        merge_cfg_from_file(os.path.join(ROOT, config))
        merge_cfg_from_list(["MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False,
                             "TEST.RPN_PRE_NMS_TOP_N", 200, "TEST.RPN_POST_NMS_TOP_N", 20,
                             "TEST.DETECTIONS_PER_IM", 10, "TEST.SCORE_THRESH", 0.0])
        assert_and_infer_cfg()
        torch.manual_seed(0)
        return Generalized_RCNN().eval()
    finally:
        reset_cfg()


@pytest.mark.cuda
@pytest.mark.parametrize("config", ["configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml",
                                    "configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml",
                                    "configs/gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"])
def test_cuda_matches_cpu(config):
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = build(config)
    gpu = copy.deepcopy(cpu).cuda()
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2, 3, 128, 160, generator=g) * 5.  # no saturated (tied) RPN scores
    im_info = torch.tensor([[128., 160., 1.], [128., 150., 2.]])
    with torch.no_grad():
        out_c = cpu(data, im_info)
        out_g = gpu(data.cuda(), im_info.cuda())
        close = dict(rtol=1e-3, atol=1e-2)
        for key in ("rois", "cls_score", "bbox_pred"):
            assert out_g[key].is_cuda
            torch.testing.assert_close(out_g[key].cpu(), out_c[key], **close)
        det_c = cpu.detect(data, im_info)
        det_g = gpu.detect(data.cuda(), im_info.cuda())
    for dc, dg in zip(det_c, det_g):
        assert dc["boxes"].shape[0] > 0
        for key in dc:
            assert dg[key].device.type == "cuda"
            torch.testing.assert_close(dg[key].cpu(), dc[key], **close)


@pytest.mark.cuda
def test_cuda_group_norm_body_in_channels_last_is_as_accurate_as_nchw():
    """The GroupNorm scratch config's body and pyramid (GroupNorm everywhere, every stage
    training) channels-last on CUDA -- the extension's fused GroupNorm (+ residual) (+ ReLU) --
    and in NCHW (PyTorch's GroupNorm backward), both float32, against the NCHW body in float64:
    the pyramid's maps and every parameter's gradient. Through ~50 random-weight layers float32
    gradients stray by percents (measured on the CPU: NCHW 2.9% of a gradient's largest value
    at worst, 0.4% on average; PyTorch's channels-last GroupNorm 4.4% / 1.0%), so the fused path
    must stay within 3x NCHW's error; a wrong formula strays by 100%."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = build("configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml").train()
    ref = ref.Conv_Body.cuda()
    nchw = copy.deepcopy(ref)
    nhwc = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    ref = ref.double()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(2, 3, 256, 320, generator=g) * 20.).cuda()
    results = []
    for body in (ref, nchw, nhwc):
        dtype = next(body.parameters()).dtype
        maps = body(data.to(dtype))
        weights = [torch.randn(m.shape, generator=g.manual_seed(2 + i)).to("cuda", dtype)
                   for i, m in enumerate(maps)]
        loss = sum((m * w).sum() for m, w in zip(maps, weights))
        grads = torch.autograd.grad(loss, [p for p in body.parameters() if p.requires_grad])
        results.append((maps, grads))
    maps = results[2][0]
    # (P6 is a strided view of P5: no layout of its own)
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in maps[:-1])
    assert 'group_norm_fused' in type(maps[0].grad_fn).__name__     # P2's GroupNorm: fused

    def errors(k):
        """Largest map error, largest and mean gradient error, each relative to the float64
        tensor's largest magnitude."""
        m = max(float((a.double() - b).abs().max() / b.abs().max())
                for a, b in zip(results[k][0], results[0][0]))
        e = [float((a.double() - b).abs().max() / b.abs().max())
             for a, b in zip(results[k][1], results[0][1])]
        return m, max(e), sum(e) / len(e)

    nchw_errors, nhwc_errors = errors(1), errors(2)
    print("errors against float64 (maps, gradients max, mean): NCHW %s, NHWC %s"
          % (nchw_errors, nhwc_errors))
    assert nchw_errors[1] < 0.2                         # the reference itself is sound
    for fused, plain in zip(nhwc_errors, nchw_errors):
        assert fused <= 3 * plain + 1e-6


@pytest.mark.cuda
@pytest.mark.parametrize("config", ["configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
                                    "configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml"])
def test_a_training_step_never_waits_for_the_gpu(config, coco_mini):
    """On CUDA the targets take fixed shapes (``losses.fixed_target_shapes``): a whole training
    step -- body, RPN and its targets, proposals, RoI sampling, mask targets, heads, losses and
    backward -- queues its work without one host synchronisation."""
    import sys
    import warnings
    sys.path.insert(0, os.path.join(ROOT, "tests", "modeling", "targets"))
    from _targets_coco import batch, load_roidb, pick_entries
    reset_cfg()
    try:
        merge_cfg_from_file(os.path.join(ROOT, config))
        merge_cfg_from_list(["MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False])
        assert_and_infer_cfg()
        torch.manual_seed(0)
        model = Generalized_RCNN().cuda().train()
    finally:
        reset_cfg()
    entries = pick_entries(load_roidb(coco_mini), 2, min_gt=2)
    gt, im_info = batch(entries, [0.5, 0.45])
    H = int(-(-im_info[:, 0].max().item() // 32) * 32)
    W = int(-(-im_info[:, 1].max().item() // 32) * 32)
    data = (torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 50).cuda()
    im_info = im_info.cuda()
    for step in range(3):   # the first steps fill the caches (anchors, layouts)
        torch.cuda.synchronize()
        if step == 2:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = model(data, im_info, gt)
                total = sum(out["losses"].values())
                model.zero_grad(set_to_none=True)
                total.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, ["%s:%d" % (w.filename, w.lineno) for w in syncs]
    assert torch.isfinite(total).item()
    assert 0 < out["metrics"]["accuracy_cls"].item() <= 1
