"""Batched box post-processing against a numpy port of Detectron's per-image loop."""
import numpy as np
import pytest
import torch

from pydetectron.modeling.postprocess import box_results_with_nms_and_limit, decode_boxes
from pydetectron.utils.boxes import bbox_transform, clip_tiled_boxes

import detectron_reference as ref


def random_detections(r, c, seed):
    rng = np.random.RandomState(seed)
    xy = rng.uniform(0, 60, size=(r, c, 2))
    wh = rng.uniform(4, 30, size=(r, c, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2).reshape(r, 4 * c).astype(np.float32)
    logits = rng.randn(r, c) * 2
    scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    return scores, boxes


@pytest.mark.parametrize("limit", [100, 7, 0])
def test_matches_detectron_per_image(limit):
    s0, b0 = random_detections(40, 6, seed=0)
    s1, b1 = random_detections(25, 6, seed=1)
    scores = torch.from_numpy(np.concatenate([s0, s1]))
    boxes = torch.from_numpy(np.concatenate([b0, b1]))
    im_inds = torch.tensor([0] * 40 + [1] * 25)
    results = box_results_with_nms_and_limit(scores, boxes, im_inds, 3, 0.05, 0.3, limit)
    assert len(results) == 3 and results[2]["boxes"].shape == (0, 4)
    for res, (s, b) in zip(results, [(s0, b0), (s1, b1)]):
        ref_boxes, ref_scores, ref_classes = ref.box_results_with_nms_and_limit(s, b, 0.05, 0.3, limit)
        np.testing.assert_array_equal(res["boxes"].numpy(), ref_boxes)
        np.testing.assert_array_equal(res["scores"].numpy(), ref_scores)
        np.testing.assert_array_equal(res["classes"].numpy(), ref_classes)
        if limit:
            assert res["scores"].shape[0] <= limit


def test_limit_keeps_ties_at_the_threshold():
    # 3 classes, 4 disjoint boxes; scores 0.9, 0.5, 0.5, 0.2: a limit of 2 keeps both 0.5s
    boxes = torch.tensor([[0., 0., 9., 9.], [20., 20., 29., 29.], [40., 40., 49., 49.],
                          [60., 60., 69., 69.]]).repeat(1, 3)
    scores = torch.tensor([[0.05, 0.9, 0.05], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5],
                           [0.4, 0.4, 0.2]])
    res = box_results_with_nms_and_limit(scores, boxes, torch.zeros(4, dtype=torch.long), 1,
                                         0.3, 0.5, 2)[0]
    assert res["scores"].tolist() == [0.8999999761581421, 0.5, 0.5]
    assert res["classes"].tolist() == [1, 1, 2]


def test_decode_boxes_in_original_coordinates_and_class_agnostic():
    rois = torch.tensor([[0., 10., 20., 49., 59.], [1., 0., 0., 99., 99.]])
    im_info = torch.tensor([[100., 120., 2.], [200., 200., 1.]])
    deltas = torch.randn(2, 8) * 0.3
    out = decode_boxes(rois, deltas, 2, im_info, im_sizes=[[50, 60], [200, 200]],
                       weights=(10., 10., 5., 5.))
    ref0 = clip_tiled_boxes(bbox_transform(rois[:1, 1:] / 2, deltas[:1], (10., 10., 5., 5.)),
                            (50, 60))
    ref1 = clip_tiled_boxes(bbox_transform(rois[1:, 1:], deltas[1:], (10., 10., 5., 5.)), (200, 200))
    torch.testing.assert_close(out, torch.cat([ref0, ref1]))
    agn = decode_boxes(rois, deltas, 3, im_info, im_sizes=[[50, 60], [200, 200]],
                       cls_agnostic_bbox_reg=True)
    assert agn.shape == (2, 12)
    torch.testing.assert_close(agn[:, 4:8], agn[:, 8:12])
    no_reg = decode_boxes(rois, deltas, 2, im_info, im_sizes=[[50, 60], [200, 200]], bbox_reg=False)
    torch.testing.assert_close(no_reg[:, :4], torch.tensor([[5., 10., 24.5, 29.5],
                                                            [0., 0., 99., 99.]]))
