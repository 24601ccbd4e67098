"""Exact-value tests of Detectron's box conventions (+1 widths, decode asymmetry, IoU)."""
import math

import numpy as np
import pytest
import torch

from pydetectron.utils import boxes as box_utils


def test_xywh_xyxy_roundtrip_and_plus_one():
    assert box_utils.xywh_to_xyxy([10, 20, 5, 8]) == (10, 20, 14, 27)
    assert box_utils.xyxy_to_xywh([10, 20, 14, 27]) == (10, 20, 5, 8)
    # A width below one pixel collapses to a one-pixel box.
    assert box_utils.xywh_to_xyxy([3, 4, 0.5, 0]) == (3, 4, 3, 4)
    arr = np.array([[0., 0., 10., 20.], [5., 6., 1., 1.]])
    xyxy = box_utils.xywh_to_xyxy(arr)
    np.testing.assert_array_equal(xyxy, [[0, 0, 9, 19], [5, 6, 5, 6]])
    np.testing.assert_array_equal(box_utils.xyxy_to_xywh(xyxy), arr)


def test_boxes_area_plus_one_and_negative():
    b = np.array([[0, 0, 9, 19], [5, 5, 5, 5]], dtype=np.float32)
    np.testing.assert_array_equal(box_utils.boxes_area(b), [200, 1])
    assert torch.equal(box_utils.boxes_area(torch.from_numpy(b)), torch.tensor([200., 1.]))
    with pytest.raises(ValueError, match="negative area"):
        box_utils.boxes_area(np.array([[10, 10, 5, 12]], dtype=np.float32))


def test_bbox_overlaps_hand_computed():
    a = np.array([[0, 0, 9, 9]], dtype=np.float32)          # 10 x 10 = 100
    q = np.array([[5, 5, 14, 14],                           # inter 5 x 5 = 25 -> 25 / 175
                  [0, 0, 9, 9],                             # identical -> 1
                  [10, 10, 20, 20],                         # touching corner, no overlap with +1? 10 > 9
                  [9, 9, 9, 9]], dtype=np.float32)          # single pixel inside -> 1 / 100
    iou = box_utils.bbox_overlaps(a, q)
    assert iou.dtype == np.float32 and iou.shape == (1, 4)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 0.0, 1 / 100], rtol=1e-6)
    assert box_utils.bbox_overlaps(np.zeros((0, 4)), q).shape == (0, 4)


def test_bbox_transform_inverse_hand_computed():
    boxes = np.array([[0., 0., 9., 19.]])                   # w 10, h 20, centre (5, 10)
    gt = np.array([[10., 0., 29., 19.]])                    # w 20, h 20, centre (20, 10)
    t = box_utils.bbox_transform_inv(boxes, gt, weights=(10., 10., 5., 5.))
    np.testing.assert_allclose(t, [[10 * 15 / 10, 0., 5 * math.log(2.), 0.]])
    # Decoding the targets returns the gt box exactly (the -1 in x2 undoes the +1 width).
    dec = box_utils.bbox_transform(boxes, t, weights=(10., 10., 5., 5.))
    np.testing.assert_allclose(dec, gt, atol=1e-9)


@pytest.mark.parametrize('weights', [(1., 1., 1., 1.), (10., 10., 5., 5.), (2., 3., 1., 4.)])
def test_bbox_transform_inv_of_tensors_is_the_written_out_arithmetic_bit_for_bit(weights):
    """The tensor path (pairs of columns at once when the x and y weights are equal) against
    Detectron's arithmetic column by column, float32 bit for bit, degenerate boxes included;
    and float64 tensors against numpy."""
    torch.manual_seed(0)
    b = torch.rand(500, 4) * 800
    b[:, 2:] += b[:, :2] * 0.5
    g = torch.rand(500, 4) * 800
    g[:, 2:] += g[:, :2] * 0.5
    b[:3, 2] = b[:3, 0] - 3                       # a negative width: log of a negative ratio
    wx, wy, ww, wh = weights
    ex_w, ex_h = b[:, 2] - b[:, 0] + 1.0, b[:, 3] - b[:, 1] + 1.0
    gt_w, gt_h = g[:, 2] - g[:, 0] + 1.0, g[:, 3] - g[:, 1] + 1.0
    want = torch.stack([wx * ((g[:, 0] + 0.5 * gt_w) - (b[:, 0] + 0.5 * ex_w)) / ex_w,
                        wy * ((g[:, 1] + 0.5 * gt_h) - (b[:, 1] + 0.5 * ex_h)) / ex_h,
                        ww * torch.log(gt_w / ex_w), wh * torch.log(gt_h / ex_h)], 1)
    got = box_utils.bbox_transform_inv(b, g, weights)
    assert got.dtype == torch.float32 and got.shape == (500, 4)
    same = (got.view(torch.int32) == want.view(torch.int32)) | (got.isnan() & want.isnan())
    assert bool(same.all()) and bool(got[:3].isnan().any())
    b64, g64 = b[3:].double(), g[3:].double()
    np.testing.assert_allclose(box_utils.bbox_transform_inv(b64, g64, weights).numpy(),
                               box_utils.bbox_transform_inv(b64.numpy(), g64.numpy(), weights),
                               rtol=1e-14, atol=0)


def test_bbox_transform_clip_and_tiling_numpy_torch_parity():
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 100, size=(7, 2))
    boxes = np.hstack([xy, xy + rng.uniform(1, 50, size=(7, 2))])
    deltas = rng.normal(size=(7, 12))
    deltas[0, 2] = 100.0                                    # huge dw is clipped at log(1000/16)
    out = box_utils.bbox_transform(boxes, deltas, weights=(10., 10., 5., 5.))
    w0 = boxes[0, 2] - boxes[0, 0] + 1
    ctr0 = boxes[0, 0] + 0.5 * w0
    # dw = 100 / 5 = 20 is clipped to log(1000/16) before exp
    pred_w = w0 * 1000. / 16.
    assert out[0, 0] == pytest.approx(ctr0 + deltas[0, 0] / 10 * w0 - 0.5 * pred_w)
    assert out[0, 2] == pytest.approx(ctr0 + deltas[0, 0] / 10 * w0 + 0.5 * pred_w - 1)
    out_t = box_utils.bbox_transform(torch.from_numpy(boxes), torch.from_numpy(deltas),
                                     weights=(10., 10., 5., 5.))
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-12)
    assert box_utils.bbox_transform(np.zeros((0, 4)), np.zeros((0, 8))).shape == (0, 8)


def test_bbox_transform_clip_value():
    boxes = np.array([[0., 0., 15., 15.]])                  # w 16
    deltas = np.array([[0., 0., 50., 0.]])
    out = box_utils.bbox_transform(boxes, deltas)
    # dw clipped to log(1000/16): the width becomes 16 * 1000 / 16 = 1000
    assert out[0, 2] - out[0, 0] + 1 == pytest.approx(1000.0)


def test_clip_flip_expand():
    b = np.array([[-5., 3., 120., 90.]])
    c = box_utils.clip_boxes_to_image(b, height=50, width=100)
    np.testing.assert_array_equal(c, [[0, 3, 99, 49]])
    assert b[0, 0] == -5.                                   # input untouched
    tb = torch.tensor([[-5., 3., 120., 90., 1., 1., 2., 2.]])
    np.testing.assert_array_equal(box_utils.clip_tiled_boxes(tb, (50, 100)).numpy(),
                                  [[0, 3, 99, 49, 1, 1, 2, 2]])
    f = box_utils.flip_boxes(np.array([[0., 1., 9., 5.]]), im_width=100)
    np.testing.assert_array_equal(f, [[90, 1, 99, 5]])
    np.testing.assert_array_equal(box_utils.flip_boxes(f, 100), [[0, 1, 9, 5]])
    e = box_utils.expand_boxes(np.array([[10., 10., 20., 30.]]), 2.0)
    np.testing.assert_array_equal(e, [[5, 0, 25, 40]])
    np.testing.assert_array_equal(box_utils.aspect_ratio(np.array([[1., 2., 3., 4.]]), 2.0),
                                  [[2, 2, 6, 4]])


def test_filter_small_and_unique():
    b = np.array([[0, 0, 4, 4], [0, 0, 5, 9], [0, 0, 9, 9], [0, 0, 9, 9]], dtype=np.float32)
    # widths 5, 6, 10, 10: strictly above 5 keeps the last three
    np.testing.assert_array_equal(box_utils.filter_small_boxes(b, 5), [1, 2, 3])
    np.testing.assert_array_equal(box_utils.unique_boxes(b), [0, 1, 2])
