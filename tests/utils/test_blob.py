"""utils.blob: Detectron's scale rule, mean subtraction without std, padding to the FPN stride."""
import glob
import os

import cv2
import numpy as np
import pytest

from pydetectron.utils import blob as blob_utils

MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])


@pytest.mark.parametrize('h, w, target, max_size, expected', [
    (480, 640, 800, 1333, 800 / 480.),      # short side reaches the target
    (480, 1600, 800, 1333, 1333 / 1600.),   # long side capped
    (640, 480, 600, 1000, 600 / 480.),      # portrait: the short side is the width
    # 1000 * (800 / 600) = 1333.33 rounds to 1333, not above MAX_SIZE: short-side rule kept
    (600, 1000, 800, 1333, 800 / 600.),
    # 1001 * (800 / 600) = 1334.67 rounds to 1335 > 1333: capped
    (600, 1001, 800, 1333, 1333 / 1001.),
])
def test_get_im_scale(h, w, target, max_size, expected):
    assert blob_utils.get_im_scale(h, w, target, max_size) == pytest.approx(expected, rel=1e-12)


def test_prep_im_for_blob_subtracts_means_and_resizes():
    im = np.full((48, 64, 3), 100, dtype=np.uint8)
    im[:, :, 1] = 150
    out, scale = blob_utils.prep_im_for_blob(im, MEANS, 96, 1000)
    assert scale == 2.0
    assert out.shape == (96, 128, 3) and out.dtype == np.float32
    # a constant image stays constant under bilinear resizing: pixel - mean, no std, the
    # difference taken in float64 and rounded once (hand-computed: 100 - 102.9801 = -2.9801)
    np.testing.assert_array_equal(out[5, 7], np.float32([-2.9801, 34.0535, -22.7717]))
    outs, scales = blob_utils.prep_im_for_blob(im, MEANS, [24, 96], 1000)
    assert [o.shape for o in outs] == [(24, 32, 3), (96, 128, 3)] and scales == [0.5, 2.0]


def test_prep_im_for_blob_rejects_non_bgr():
    with pytest.raises(ValueError, match='BGR'):
        blob_utils.prep_im_for_blob(np.zeros((10, 10), np.uint8), MEANS, 10, 100)


def test_scaled_size_matches_resize():
    im = np.zeros((427, 640, 3), dtype=np.uint8)
    for target, max_size in ((800, 1333), (600, 1000), (333, 500)):
        out, s = blob_utils.prep_im_for_blob(im, MEANS, target, max_size)
        assert out.shape[:2] == blob_utils.get_scaled_size(427, 640, s)


def test_im_list_to_blob_pads_to_stride_with_zeros():
    a = np.random.RandomState(0).randn(50, 70, 3).astype(np.float32)
    b = np.random.RandomState(1).randn(65, 40, 3).astype(np.float32)
    blob = blob_utils.im_list_to_blob([a, b], stride=32)
    assert blob.shape == (2, 3, 96, 96) and blob.dtype == np.float32
    np.testing.assert_array_equal(blob[0, :, :50, :70], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(blob[1, :, :65, :40], b.transpose(2, 0, 1))
    assert not blob[0, :, 50:].any() and not blob[0, :, :, 70:].any()
    assert not blob[1, :, 65:].any() and not blob[1, :, :, 40:].any()
    # no stride: padded to the largest image only
    assert blob_utils.im_list_to_blob([a, b], stride=1).shape == (2, 3, 65, 70)
    # filling a dirty preallocated array zeroes its padding
    out = np.full((2, 3, 96, 96), 7., dtype=np.float32)
    np.testing.assert_array_equal(blob_utils.im_list_to_blob([a, b], stride=32, out=out), blob)


def test_im_list_to_blob_default_stride_follows_fpn(fresh_cfg):
    im = np.zeros((50, 70, 3), np.float32)
    assert blob_utils.im_list_to_blob([im]).shape == (1, 3, 50, 70)
    fresh_cfg.FPN.FPN_ON = True
    assert blob_utils.im_list_to_blob([im]).shape == (1, 3, 64, 96)


def test_get_image_blob_reports_the_padded_size(fresh_cfg):
    fresh_cfg.FPN.FPN_ON = True
    im = np.zeros((427, 640, 3), dtype=np.uint8)
    blob, scale, im_info = blob_utils.get_image_blob(im, 800, 1333)
    assert scale == pytest.approx(800 / 427.)
    assert blob.shape == (1, 3, 800, 1216)  # 1199 -> 1216, a multiple of 32
    np.testing.assert_allclose(im_info, [[800, 1216, 800 / 427.]], rtol=1e-6)
    assert im_info.dtype == np.float32


def _coco_mini_photos(coco_mini, n=3):
    paths = sorted(glob.glob(os.path.join(coco_mini, 'images', 'train2017', '*.jpg')))[:n]
    assert len(paths) == n
    return [cv2.imread(p) for p in paths]


def _detectron_blob_rule(im, target_size, max_size):
    """Detectron's prep_im_for_blob rule written out: each pixel minus its channel's mean in
    float64 (``im.astype(float32); im -= float64 means`` computes the difference in float64),
    rounded once to float32, then cv2.resize with fx = fy = the scale."""
    diff = np.empty(im.shape, np.float32)
    for y in range(im.shape[0]):          # per row, in Python floats (float64), no shared code
        for c in range(3):
            diff[y, :, c] = [float(v) - float(MEANS.reshape(3)[c]) for v in im[y, :, c]]
    h, w = im.shape[:2]
    scale = float(target_size) / min(h, w)
    if np.round(scale * max(h, w)) > max_size:
        scale = float(max_size) / max(h, w)
    return cv2.resize(diff, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), scale


def test_subtraction_is_float64_rounded_once(coco_mini):
    """Float64 subtraction then one rounding, not float32 means subtracted in float32 (what
    cv2.subtract on a float32 image computes): the two differ on a large share of the values of
    a real photo, so the check below can tell them apart."""
    im = _coco_mini_photos(coco_mini, 1)[0]
    out = blob_utils.subtract_pixel_means(im, MEANS)
    ref = im.astype(np.float32)
    ref -= MEANS                                   # NumPy: float64 loop, cast back to float32
    np.testing.assert_array_equal(out, ref)
    float32_rule = im.astype(np.float32) - MEANS.reshape(3).astype(np.float32)
    assert (float32_rule != out).mean() > 0.3
    # a non-uint8 image takes the float64 path: same rule
    out16 = blob_utils.subtract_pixel_means(im.astype(np.uint16), MEANS)
    np.testing.assert_array_equal(out16, ref)


@pytest.mark.parametrize('target_size, max_size', [(800, 1333), (600, 1000), (300, 500)])
def test_blob_bit_identical_to_detectron_on_photos(coco_mini, fresh_cfg, target_size, max_size):
    for im in _coco_mini_photos(coco_mini):
        expected, expected_scale = _detectron_blob_rule(im, target_size, max_size)
        out, scale = blob_utils.prep_im_for_blob(im, MEANS, target_size, max_size)
        assert scale == expected_scale
        assert out.dtype == np.float32 and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
        # the test-time blob (N, 3, H, W): the same values, zero padding
        blob, _, im_info = blob_utils.get_image_blob(im, target_size, max_size, MEANS, stride=32)
        h, w = expected.shape[:2]
        np.testing.assert_array_equal(blob[0, :, :h, :w], expected.transpose(2, 0, 1))
        assert not blob[0, :, h:, :].any() and not blob[0, :, :, w:].any()


# ---------------------------------------------------------------------------------------------- #
# SHAPE_BUCKETS: the further padding of the CUDA-graph compile modes
# ---------------------------------------------------------------------------------------------- #

def test_shape_buckets_round_up_to_a_multiple_or_a_scale_side():
    # 800 / 1333 at stride 32: the edges are 800 and 1344 (1333 padded to 32)
    b = blob_utils.shape_buckets(160, (800,), 1333, 32)
    assert b == blob_utils.ShapeBuckets(160, (800, 1344))
    # hand-computed: next multiple of 160, or next edge when that is smaller
    for size, expected in ((64, 160), (160, 160), (448, 480), (768, 800), (800, 800),
                           (832, 960), (1088, 1120), (1216, 1280), (1312, 1344), (1344, 1344),
                           (1376, 1440)):
        assert b.round_up(size) == expected, size
    # multi-scale training: every scale's side is an edge
    b = blob_utils.shape_buckets(256, (640, 672, 800), 1000, 32)
    assert b.edges == (640, 672, 800, 1024)
    assert [b.round_up(s) for s in (608, 640, 672, 704, 800, 832, 992)] == \
        [640, 640, 672, 768, 800, 1024, 1024]
    assert blob_utils.shape_buckets(0, (800,), 1333, 32) is None
    with pytest.raises(ValueError, match='not a multiple of the stride 32'):
        blob_utils.shape_buckets(100, (800,), 1333, 32)


def test_bucketed_blob_keeps_the_images_and_pads_with_zeros():
    rng = np.random.RandomState(0)
    a = rng.randn(50, 70, 3).astype(np.float32)
    b = rng.randn(65, 40, 3).astype(np.float32)
    buckets = blob_utils.shape_buckets(128, (60,), 100, 32)    # edges 64, 128
    # largest 65 x 70 -> stride 96 x 96 -> buckets 128 x 128
    assert blob_utils.blob_shape([a, b], 32, buckets) == (2, 3, 128, 128)
    plain = blob_utils.im_list_to_blob([a, b], stride=32)
    blob = blob_utils.im_list_to_blob([a, b], stride=32, buckets=buckets)
    assert plain.shape == (2, 3, 96, 96) and blob.shape == (2, 3, 128, 128)
    np.testing.assert_array_equal(blob[:, :, :96, :96], plain)
    assert not blob[:, :, 96:].any() and not blob[:, :, :, 96:].any()
    out = np.full((2, 3, 128, 128), 7, np.float32)       # a reused buffer: stale values
    np.testing.assert_array_equal(
        blob_utils.im_list_to_blob([a, b], stride=32, out=out, buckets=buckets), blob)
    # one 50 x 60 image: stride 64 x 64, the edge 64 is its bucket (not 128)
    assert blob_utils.blob_shape([a[:, :60]], 32, buckets) == (1, 3, 64, 64)


def test_cfg_shape_buckets_follow_the_train_and_test_scales(fresh_cfg):
    assert blob_utils.cfg_shape_buckets(training=True) is None     # 0: off by default
    fresh_cfg.SHAPE_BUCKETS = 128
    fresh_cfg.FPN.FPN_ON = True
    fresh_cfg.TRAIN.SCALES, fresh_cfg.TRAIN.MAX_SIZE = (600, 700), 1000
    fresh_cfg.TEST.SCALE, fresh_cfg.TEST.MAX_SIZE = 800, 1333
    assert blob_utils.cfg_shape_buckets(training=True) == (128, (608, 704, 1024))
    assert blob_utils.cfg_shape_buckets(training=False) == (128, (800, 1344))
