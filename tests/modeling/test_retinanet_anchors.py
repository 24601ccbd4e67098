"""RetinaNet's cell anchors: exact values worked out by hand from Detectron's generate_anchors
(reference window (0, 0, stride - 1, stride - 1), ratio windows rounded, then scaled)."""
import numpy as np

from pydetectron.modeling.generate_anchors import retinanet_cell_anchors


def test_p3_octave0_exact():
    # stride 8, size 8 * 1 * 4 = 32, centre 3.5:
    #   ratio 1:   8 x 8 window  -> 32 x 32       -> (3.5 -+ 15.5)
    #   ratio 2:   w = round(sqrt(32)) = 6, h = 12 -> 24 x 48 -> x 3.5 -+ 11.5, y 3.5 -+ 23.5
    #   ratio 0.5: w = round(sqrt(128)) = 11, h = round(5.5) = 6 (ties to even)
    #              -> 44 x 24 -> x 3.5 -+ 21.5, y 3.5 -+ 11.5
    a = retinanet_cell_anchors(3, 3, (1.0, 2.0, 0.5), 4)
    assert a.shape == (9, 4)
    np.testing.assert_array_equal(a[0], [-12, -12, 19, 19])
    np.testing.assert_array_equal(a[1], [-8, -20, 15, 27])
    np.testing.assert_array_equal(a[2], [-18, -8, 25, 15])


def test_octaves_and_order():
    # octave o scales the ratio-r window by 4 * 2^(o / 3); octave major, ratio minor
    a = retinanet_cell_anchors(3, 3, (1.0, 2.0, 0.5), 4)
    for o in (1, 2):
        s = 4 * 2 ** (o / 3.)
        for r, (w, h) in enumerate([(8, 8), (6, 12), (11, 6)]):
            ws, hs = w * s, h * s
            np.testing.assert_allclose(
                a[3 * o + r], [3.5 - (ws - 1) / 2, 3.5 - (hs - 1) / 2,
                               3.5 + (ws - 1) / 2, 3.5 + (hs - 1) / 2], rtol=0, atol=1e-12)
    # octave 1, ratio 1: 32 * 2^(1/3) = 40.3175... wide
    assert a[3, 2] - a[3, 0] + 1 == np.float64(8 * 4 * 2 ** (1 / 3.))


def test_p7_and_anchor_scale():
    # stride 128: 128 x 128 window centred at 63.5, size 512 -> 63.5 -+ 255.5
    a = retinanet_cell_anchors(7, 1, (1.0,), 4)
    np.testing.assert_array_equal(a, [[-192, -192, 319, 319]])
    # ANCHOR_SCALE 2 at P3: 16 x 16 about 3.5
    np.testing.assert_array_equal(retinanet_cell_anchors(3, 1, (1.0,), 2), [[-4, -4, 11, 11]])
