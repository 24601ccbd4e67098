"""Batched proposals on the device against a numpy port of Detectron's per-image
GenerateProposalsOp and its FPN collect step."""
import warnings

import numpy as np
import pytest
import torch

from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import (
    ProposalParams, collect_fpn_proposals, generate_multilevel_proposals, generate_proposals,
    shifted_anchors)

import detectron_reference as ref


def detectron_proposals_one_image(scores, deltas, im_info, anchors, stride, params):
    return ref.proposals_one_image(scores, deltas, im_info, anchors, stride, *params)


def random_rpn_outputs(n, a, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, a, h, w, generator=g)
    deltas = torch.randn(n, 4 * a, h, w, generator=g) * 0.5
    return probs, deltas


def test_shifted_anchors_order_is_h_w_a():
    anchors = torch.tensor([[0., 0., 3., 3.], [-1., -1., 4., 4.]])
    all_a = shifted_anchors(anchors, 2, 3, 16.)
    assert all_a.shape == (2 * 3 * 2, 4)
    # row (h=1, w=2, a=1): shift (32, 16)
    assert all_a[(1 * 3 + 2) * 2 + 1].tolist() == [31., 15., 36., 20.]


@pytest.mark.parametrize("params", [ProposalParams(60, 20, 0.7, 0), ProposalParams(-1, 15, 0.5, 16),
                                    ProposalParams(50, -1, 0.7, 0), ProposalParams(40, 10, 0.0, 0)])
def test_single_level_matches_detectron_per_image(params):
    anchors = generate_anchors(16, (32, 64, 128), (0.5, 1, 2))
    probs, deltas = random_rpn_outputs(2, 9, 5, 7, seed=1)
    # two images of different sizes and scales in one padded blob
    im_info = torch.tensor([[80., 112., 1.25], [64., 96., 0.8]])
    rois, roi_probs = generate_proposals(probs, deltas, im_info, torch.as_tensor(anchors).float(),
                                         16., params)
    for i in range(2):
        ref_boxes, ref_scores = detectron_proposals_one_image(
            probs[i].numpy(), deltas[i].numpy(), im_info[i].numpy(), anchors, 16., params)
        mine = rois[rois[:, 0] == i]
        assert mine.shape[0] == ref_boxes.shape[0] > 0
        np.testing.assert_allclose(mine[:, 1:].numpy(), ref_boxes, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(roi_probs[rois[:, 0] == i].numpy(), ref_scores)
    # grouped by image, best first within an image
    assert torch.all(rois[1:, 0] >= rois[:-1, 0])
    assert torch.all(rois[:, 1:3] >= 0)
    assert torch.all(rois[:, 3] <= im_info[rois[:, 0].long(), 1] - 1)


def test_fpn_collect_per_image_at_test_and_per_batch_in_training():
    g = torch.Generator().manual_seed(3)
    rois = [torch.cat([torch.tensor([[0.]] * 6 + [[1.]] * 4), torch.rand(10, 4, generator=g) * 50],
                      dim=1) for _ in range(2)]
    probs = [torch.rand(10, generator=g) for _ in range(2)]
    probs[0][:6] += 1.0  # image 0 dominates the batch
    all_rois, all_probs = torch.cat(rois), torch.cat(probs)
    test_rois, test_probs = collect_fpn_proposals(rois, probs, 2, 5, per_image=True)
    for i in range(2):
        m = all_rois[:, 0] == i
        ref = torch.sort(all_probs[m], descending=True).values[:5]
        assert torch.equal(test_probs[test_rois[:, 0] == i], ref)
    train_rois, train_probs = collect_fpn_proposals(rois, probs, 2, 5, per_image=False)
    top5 = torch.sort(all_probs, descending=True).values[:5]
    assert torch.equal(torch.sort(train_probs, descending=True).values, top5)
    assert torch.all(train_rois[:, 0] == 0)  # the batch's top 5 all belong to image 0
    assert torch.all(test_rois[1:, 0] >= test_rois[:-1, 0])


def test_fpn_rpn_proposals_match_detectron_levels_then_collect():
    from pydetectron.modeling.rpn_heads import fpn_rpn_outputs
    torch.manual_seed(0)
    params = ProposalParams(30, 30, 0.7, 0)
    rpn = fpn_rpn_outputs(8, [1 / 4., 1 / 8., 1 / 16.], 2, 4, anchor_start_size=16,
                          test_params=params).eval()
    feats = [torch.randn(2, 8, 16 // 2 ** i, 24 // 2 ** i) for i in range(3)]
    im_info = torch.tensor([[64., 96., 1.], [60., 90., 1.5]])
    out = rpn(feats, im_info)
    for i in range(2):
        boxes, scores = [], []
        for lvl, x in zip(range(2, 5), feats):
            anchors = generate_anchors(2. ** lvl, (16 * 2. ** (lvl - 2),), (0.5, 1, 2))
            _, deltas, probs = rpn.rpn(x)
            b, s = detectron_proposals_one_image(probs[i].detach().numpy(), deltas[i].detach().numpy(),
                                                 im_info[i].numpy(), anchors, 2. ** lvl, params)
            boxes.append(b)
            scores.append(s)
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        order = np.argsort(-scores, kind="stable")[:30]
        m = out["rpn_rois"][:, 0] == i
        np.testing.assert_allclose(out["rpn_rois"][m, 1:].detach().numpy(), boxes[order], atol=1e-4)
        np.testing.assert_array_equal(out["rpn_roi_probs"][m].detach().numpy(), scores[order])


def _pyramid_outputs(n, sizes, seed, device="cpu", ties=True):
    g = torch.Generator().manual_seed(seed)
    probs, deltas, anchors, strides = [], [], [], []
    # ties=False: every score distinct (torch.rand's float32 values repeat by the thousands in
    # half a million draws), so that no tie order can differ between devices
    total = sum(n * 3 * h * w for h, w in sizes)
    distinct = (torch.randperm(total, generator=g).float() + 1) / (total + 1)
    for k, (h, w) in enumerate(sizes):
        if ties:  # many equal scores
            p = torch.rand(n, 3, h, w, generator=g)
            p[:, :, ::2] = torch.round(p[:, :, ::2] * 20) / 20
        else:
            p, distinct = distinct[:n * 3 * h * w].view(n, 3, h, w), distinct[n * 3 * h * w:]
        probs.append(p.to(device))
        deltas.append((torch.randn(n, 12, h, w, generator=g) * 0.4).to(device))
        anchors.append(torch.as_tensor(generate_anchors(2. ** (k + 2), (16. * 2 ** k,),
                                                        (0.5, 1, 2))).float().to(device))
        strides.append(2. ** (k + 2))
    return probs, deltas, anchors, strides


@pytest.mark.parametrize("params,top_n,per_image", [
    (ProposalParams(40, 25, 0.6, 0), 30, True), (ProposalParams(40, 25, 0.6, 4), 45, False),
    (ProposalParams(-1, -1, 0.7, 0), 0, True), (ProposalParams(30, 20, 0.0, 0), 16, False),
    (ProposalParams(50, 12, 0.5, 0), -1, False)])
def test_multilevel_equals_levels_one_by_one_then_collect(params, top_n, per_image):
    # The batched, flag-based path must equal what Detectron does: each level on its own
    # (generate_proposals), then the collect step over the levels' outputs.
    probs, deltas, anchors, strides = _pyramid_outputs(3, [(12, 16), (6, 8), (3, 4)], seed=7)
    im_info = torch.tensor([[48., 64., 1.], [40., 60., 0.5], [30., 50., 2.]])
    rois, scores = generate_multilevel_proposals(probs, deltas, im_info, anchors, strides, params,
                                                 collect_top_n=top_n, per_image=per_image)
    per_level = [generate_proposals(p, d, im_info, a, s, params)
                 for p, d, a, s in zip(probs, deltas, anchors, strides)]
    ref_rois, ref_scores = collect_fpn_proposals([r for r, _ in per_level],
                                                 [p for _, p in per_level], 3, top_n,
                                                 per_image=per_image)
    assert rois.shape[0] > 0
    assert torch.equal(rois, ref_rois)
    assert torch.equal(scores, ref_scores)
    # without the collect step: the levels' proposals one level after the other
    rois, scores = generate_multilevel_proposals(probs, deltas, im_info, anchors, strides, params)
    assert torch.equal(rois, torch.cat([r for r, _ in per_level]))
    assert torch.equal(scores, torch.cat([p for _, p in per_level]))


@pytest.mark.parametrize("params,top_n", [
    (ProposalParams(40, 25, 0.6, 4), 45), (ProposalParams(40, 25, 0.6, 4), 400),
    (ProposalParams(30, 20, 0.0, 0), 16), (ProposalParams(50, 12, 0.5, 0), -1),
    (ProposalParams(40, 25, 0.6, 4), None),
    (ProposalParams(30, 8, 0.6, 0), None), (ProposalParams(30, 20, 0.0, 0), None)])
def test_padded_proposals_are_the_proposals_then_flagged_rows(params, top_n):
    """``padded`` (training): the valid rows come first and are the unpadded result; the
    number of rows depends on the shapes and settings alone, not on the scores (top_n 400,
    -1 and the first case without a collect step leave padding rows: fewer kept than rows)."""
    im_info = torch.tensor([[48., 64., 1.], [40., 60., 0.5], [30., 50., 2.]])
    counts = set()
    for seed in (7, 8):
        probs, deltas, anchors, strides = _pyramid_outputs(3, [(12, 16), (6, 8), (3, 4)], seed)
        rois, scores = generate_multilevel_proposals(probs, deltas, im_info, anchors, strides,
                                                     params, collect_top_n=top_n,
                                                     per_image=False)
        prois, pscores, valid = generate_multilevel_proposals(
            probs, deltas, im_info, anchors, strides, params, collect_top_n=top_n,
            per_image=False, padded=True)
        n = rois.shape[0]
        assert 0 < n <= prois.shape[0]
        assert valid[:n].all() and not valid[n:].any()
        assert torch.equal(prois[:n], rois) and torch.equal(pscores[:n], scores)
        counts.add(prois.shape[0])
    assert len(counts) == 1
    if top_n is None and params.nms_thresh > 0:   # at most post_nms_top_n per image and map
        assert counts == {3 * 3 * params.post_nms_top_n}
    with pytest.raises(ValueError, match="per_image=False"):
        generate_multilevel_proposals(probs, deltas, im_info, anchors, strides, params,
                                      collect_top_n=10, per_image=True, padded=True)


def test_nms_in_image_chunks_equals_one_call(monkeypatch):
    # Large batches run the NMS a few images at a time; the result must not change.
    from pydetectron.modeling import generate_proposals as gp
    probs, deltas, anchors, strides = _pyramid_outputs(5, [(12, 16), (6, 8), (3, 4)], seed=4)
    im_info = torch.tensor([[48., 64., 1.]] * 5)
    params = ProposalParams(60, 30, 0.6, 0)
    whole = generate_multilevel_proposals(probs, deltas, im_info, anchors, strides, params,
                                          collect_top_n=100, per_image=False)
    monkeypatch.setattr(gp, "_NMS_CHUNK", 150)  # 156 candidates per image: one image a call
    chunked = generate_multilevel_proposals(probs, deltas, im_info, anchors, strides, params,
                                            collect_top_n=100, per_image=False)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert whole[0][:, 0].unique().numel() == 5


def test_multilevel_argument_errors():
    probs, deltas, anchors, strides = _pyramid_outputs(1, [(4, 4), (2, 2)], seed=1)
    im_info = torch.tensor([[16., 16., 1.]])
    with pytest.raises(ValueError, match="2 cls_probs, 1 bbox_pred"):
        generate_multilevel_proposals(probs, deltas[:1], im_info, anchors, strides,
                                      ProposalParams(10, 5, 0.7, 0))
    with pytest.raises(ValueError, match="does not match cls_probs"):
        generate_multilevel_proposals(probs, deltas[::-1], im_info, anchors, strides,
                                      ProposalParams(10, 5, 0.7, 0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_multilevel_on_cuda_matches_cpu_with_one_host_sync():
    params = ProposalParams(2000, 2000, 0.7, 0)
    sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
    # no ties: CUDA's topk may order equal scores differently from the CPU's
    cpu = _pyramid_outputs(2, sizes, seed=3, ties=False)
    gpu = _pyramid_outputs(2, sizes, seed=3, device="cuda", ties=False)
    im_info = torch.tensor([[800., 1333., 1.], [780., 1300., 1.]])
    im_info_gpu = im_info.cuda()
    for top_n, per_image in ((2000, False), (1000, True)):
        ref = generate_multilevel_proposals(cpu[0], cpu[1], im_info, cpu[2], cpu[3], params,
                                            collect_top_n=top_n, per_image=per_image)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = generate_multilevel_proposals(gpu[0], gpu[1], im_info_gpu, gpu[2], gpu[3],
                                                params, collect_top_n=top_n, per_image=per_image)
        torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, ["%s:%d" % (w.filename, w.lineno) for w in syncs]
        if not per_image:   # training's padded rows: no host synchronisation at all
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                padded = generate_multilevel_proposals(
                    gpu[0], gpu[1], im_info_gpu, gpu[2], gpu[3], params, collect_top_n=top_n,
                    per_image=False, padded=True)
            torch.cuda.set_sync_debug_mode("default")
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            assert not syncs, ["%s:%d" % (w.filename, w.lineno) for w in syncs]
            n = out[0].shape[0]
            assert padded[2][:n].all() and not padded[2][n:].any()
            assert torch.equal(padded[0][:n], out[0])
        # exp / division may differ by an ulp between the devices, which can flip an NMS
        # decision at the threshold now and then: the same proposals but for a fraction of 1%
        got_rois, got_scores = out[0].cpu(), out[1].cpu()
        assert abs(got_rois.shape[0] - ref[0].shape[0]) <= 0.005 * ref[0].shape[0]
        assert torch.isin(got_scores, ref[1]).float().mean() > 0.99
        # a proposal found on both devices (its score is unique) has the same box
        ref_order = torch.argsort(ref[1])
        pos = torch.searchsorted(ref[1][ref_order], got_scores).clamp(max=ref[1].numel() - 1)
        match = ref[1][ref_order][pos] == got_scores
        torch.testing.assert_close(got_rois[match], ref[0][ref_order][pos][match], rtol=0,
                                   atol=1e-3)
