"""Detectron's quantized anchors, checked against hand-computed values."""
import numpy as np

from pydetectron.modeling.generate_anchors import generate_anchors


def test_c4_anchors_stride16():
    # Reference window (0, 0, 15, 15), centre 7.5. Ratio 0.5: w = round(sqrt(512)) = 23,
    # h = round(11.5) = 12 (ties to even); scaled by 128/16 = 8: 184 x 96 about 7.5.
    a = generate_anchors(stride=16, sizes=(128, 256, 512), aspect_ratios=(0.5, 1, 2))
    expected = np.array([
        [-84., -40., 99., 55.],
        [-176., -88., 191., 103.],
        [-360., -184., 375., 199.],
        [-56., -56., 71., 71.],
        [-120., -120., 135., 135.],
        [-248., -248., 263., 263.],
        [-36., -80., 51., 95.],
        [-80., -168., 95., 183.],
        [-168., -344., 183., 359.]])
    np.testing.assert_array_equal(a, expected)


def test_fpn_level2_anchors():
    # Stride 4, size 32: ratio 0.5 -> w = round(sqrt(32)) = 6, h = 3, x 8 = 48 x 24 about 1.5
    a = generate_anchors(stride=4, sizes=(32,), aspect_ratios=(0.5, 1, 2))
    np.testing.assert_array_equal(a, [[-22., -10., 25., 13.], [-14., -14., 17., 17.],
                                      [-10., -22., 13., 25.]])


def test_anchor_order_is_ratio_major_and_quantized():
    a = generate_anchors(stride=16, sizes=(32, 64), aspect_ratios=(0.5, 2))
    w = a[:, 2] - a[:, 0] + 1
    h = a[:, 3] - a[:, 1] + 1
    # ratio 0.5 (46 x 24 base 23 x 12 at 2x), then x4; ratio 2: base 11 x 22
    np.testing.assert_array_equal(w, [46., 92., 22., 44.])
    np.testing.assert_array_equal(h, [24., 48., 44., 88.])


def test_matches_detectrons_two_step_enumeration():
    import detectron_reference as ref
    for stride, sizes, ratios in [(16, (32, 64, 128, 256, 512), (0.5, 1, 2)), (64, (512,), (0.5, 1, 2)),
                                  (8, (21, 45), (0.3, 1.7)), (32, (256,), (0.25, 0.5, 1, 2, 4))]:
        np.testing.assert_array_equal(generate_anchors(stride, sizes, ratios),
                                      ref.anchors(stride, sizes, ratios))
