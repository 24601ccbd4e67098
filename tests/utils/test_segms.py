"""utils.segms: flips, scaling and crops of polygons and RLE masks agree with the pixels."""
import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.utils import segms as segm_utils


def _random_polygon(rng, height, width):
    n = rng.randint(3, 12)
    angles = np.sort(rng.rand(n)) * 2 * np.pi
    radii = rng.uniform(8, 50, n)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel().tolist()


def _uncompressed(mask):
    flat = mask.reshape(-1, order='F').astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {'size': list(mask.shape), 'counts': runs}


def test_polygon_area_and_validity():
    square = [0, 0, 4, 0, 4, 3, 0, 3]
    assert segm_utils.polygon_area(square) == 12.0
    assert segm_utils.is_valid_polygon(square)
    assert not segm_utils.is_valid_polygon([0, 0, 4, 0])              # 2 points
    assert not segm_utils.is_valid_polygon([0, 0, 1, 1, 2, 2])        # collinear: no area
    assert not segm_utils.is_valid_polygon([0, 0, 4, 0, 4, 3, 0])     # odd count


def test_flip_polygon_maps_x_to_width_minus_x_minus_1():
    flipped = segm_utils.flip_segms([[[1., 2., 5., 2., 5., 7.]]], height=10, width=20)
    assert flipped == [[[18., 2., 14., 2., 14., 7.]]]


def test_flip_twice_is_identity_for_all_forms():
    rng = np.random.RandomState(0)
    h, w = 60, 90
    poly_segm = [_random_polygon(rng, h, w), _random_polygon(rng, h, w)]
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:30, 5:40] = 1
    mask[40:55, 60:88] = 1
    uncompressed = _uncompressed(mask)
    compressed_str = dict(segm_utils.mask_to_rle(mask))
    compressed_str['counts'] = compressed_str['counts'].decode('ascii')
    segms = [poly_segm, uncompressed, compressed_str]
    once = segm_utils.flip_segms(segms, h, w)
    twice = segm_utils.flip_segms(once, h, w)
    for a, b in zip(twice[0], poly_segm):
        np.testing.assert_allclose(a, b, atol=1e-9)
    for rle in twice[1:]:
        np.testing.assert_array_equal(mask_util.decode(rle), mask)
    # the RLE flip is the mirrored mask
    np.testing.assert_array_equal(mask_util.decode(once[1]), mask[:, ::-1])
    np.testing.assert_array_equal(mask_util.decode(once[2]), mask[:, ::-1])


def test_flipped_polygon_rasterizes_close_to_mirrored_mask():
    rng = np.random.RandomState(1)
    h, w = 80, 120
    poly = _random_polygon(rng, h, w)
    m = segm_utils.segm_to_mask([poly], h, w)
    mf = segm_utils.segm_to_mask(segm_utils.flip_segms([[poly]], h, w)[0], h, w)
    # x -> w - 1 - x is the pixel-index mirror; polygon rasterization shifts by at most an edge
    assert (mf != m[:, ::-1]).sum() <= 0.1 * m.sum() + 10


def test_crop_of_polygons_matches_crop_of_mask():
    rng = np.random.RandomState(0)
    h, w = 120, 200
    mismatch, total = 0, 0
    for _ in range(60):
        poly = _random_polygon(rng, h, w)
        x0, y0 = rng.randint(0, 100), rng.randint(0, 50)
        cw, ch = rng.randint(20, w - x0), rng.randint(20, h - y0)
        ref = segm_utils.segm_to_mask([poly], h, w)[y0:y0 + ch, x0:x0 + cw]
        cropped = segm_utils.crop_segms([[poly]], x0, y0, cw, ch, h, w)[0]
        got = segm_utils.segm_to_mask(cropped, ch, cw)
        # nothing outside the window, and the same pixels up to rasterization along split edges
        for p in cropped:
            p = np.asarray(p)
            assert p[0::2].min() >= 0 and p[0::2].max() <= cw
            assert p[1::2].min() >= 0 and p[1::2].max() <= ch
        mismatch += (got != ref).sum()
        total += ref.sum()
        if ref.sum() == 0:
            assert got.sum() == 0
    assert total > 10000
    assert mismatch < 0.01 * total


def test_crop_outside_window_drops_polygons_and_crops_rle_exactly():
    h, w = 50, 80
    poly = [[60, 10, 75, 10, 75, 30, 60, 30]]
    assert segm_utils.crop_segms([poly], 0, 0, 40, 50, h, w) == [[]]
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[5:45, 30:70] = 1
    rle = segm_utils.crop_segms([_uncompressed(mask)], 20, 10, 40, 30, h, w)[0]
    np.testing.assert_array_equal(mask_util.decode(rle), mask[10:40, 20:60])


def test_scale_segms():
    h, w = 40, 60
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:20, 10:30] = 1
    out = segm_utils.scale_segms([[[1., 2., 3., 4., 5., 6.]], _uncompressed(mask)], 1.5, h, w)
    np.testing.assert_allclose(out[0][0], [1.5, 3., 4.5, 6., 7.5, 9.])
    assert out[0][0].dtype == np.float32
    scaled = mask_util.decode(out[1])
    assert scaled.shape == (60, 90)
    assert scaled[15:30, 15:45].all() and scaled.sum() == 15 * 30


def test_boxes_of_masks_and_polygons():
    polys = [[[1, 2, 10, 2, 10, 8], [12, 0, 14, 0, 14, 3]]]
    np.testing.assert_array_equal(segm_utils.polys_to_boxes(polys), [[1, 0, 14, 8]])
    mask = np.zeros((10, 10), dtype=np.uint8)
    assert segm_utils.mask_to_bbox(mask) is None
    mask[2:5, 3:9] = 1
    np.testing.assert_array_equal(segm_utils.mask_to_bbox(mask), [3, 2, 8, 4])


def test_polys_to_mask_wrt_box_fills_the_box():
    box = np.array([10., 20., 30., 40.])
    poly = [[10, 20, 30, 20, 30, 40, 10, 40]]
    m = segm_utils.polys_to_mask_wrt_box(poly, box, 14)
    assert m.shape == (14, 14) and m.dtype == np.float32
    assert m.all()
    half = [[10, 20, 20, 20, 20, 40, 10, 40]]  # left half of the box
    m = segm_utils.polys_to_mask_wrt_box(half, box, 14)
    assert m[:, :7].all() and not m[:, 7:].any()


def test_rle_mask_nms_suppresses_overlapping_masks():
    masks = []
    for x0 in (0, 2, 30):
        m = np.zeros((40, 60), dtype=np.uint8)
        m[5:25, x0:x0 + 20] = 1
        masks.append(segm_utils.mask_to_rle(m))
    dets = np.array([[0, 0, 1, 1, 0.9], [0, 0, 1, 1, 0.95], [0, 0, 1, 1, 0.5]])
    # masks 0 and 1 overlap by IoU 18 / 22; 1 scores higher and survives
    assert segm_utils.rle_mask_nms(masks, dets, 0.5) == [1, 2]
    assert segm_utils.rle_mask_nms(masks, dets, 0.9) == [1, 0, 2]
    with pytest.raises(ValueError, match='mode'):
        segm_utils.rle_mask_nms(masks, dets, 0.5, mode='BAD')
