"""roi_data.minibatch: aspect crops keep image, boxes, masks and keypoints together; blob scale."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.datasets import roidb as roidb_utils
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.roi_data import minibatch
from pydetectron.utils import segms as segm_utils

MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])


@pytest.fixture(scope='module')
def kp_roidb(coco_mini):
    spec = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'person_keypoints_train2017.json'),
        os.path.join(coco_mini, 'images', 'train2017'))
    ds = JsonDataset(spec)
    roidb = [e for e in ds.get_roidb() if len(e['boxes']) > 0]
    roidb += [roidb_utils.flip_entry(e, ds) for e in roidb]
    return roidb


def _masks(segms, h, w):
    return [segm_utils.segm_to_mask(s, h, w) for s in segms]


def _expected_survivors(entry, x0, y0, cw, ch):
    """Rows whose box meets the window and stays wider/taller than one pixel once clipped."""
    rows = []
    for i, (bx1, by1, bx2, by2) in enumerate(entry['boxes']):
        c = np.clip([bx1 - x0, by1 - y0, bx2 - x0, by2 - y0], 0, [cw - 1, ch - 1] * 2)
        if bx2 >= x0 and bx1 <= x0 + cw - 1 and by2 >= y0 and by1 <= y0 + ch - 1 \
                and c[2] > c[0] and c[3] > c[1]:
            rows.append((i, c))
    return rows


def test_crop_keeps_boxes_masks_and_keypoints_with_the_image(kp_roidb):
    rng = np.random.RandomState(0)
    checked_kps = checked_masks = removed = 0
    for entry in kp_roidb:
        h, w = entry['height'], entry['width']
        ratio = 1.0 if w > h else 0.9  # forces a crop of the long side
        x0, y0, cw, ch = minibatch.choose_crop_window(entry, ratio, rng)
        assert cw == w or ch == h
        assert abs(cw / float(ch) - ratio) < 0.02
        cropped = minibatch.crop_entry(entry, x0, y0, cw, ch)
        assert cropped['width'] == cw and cropped['height'] == ch
        n_gt = len(cropped['segms'])
        assert n_gt == len(cropped['boxes']) == len(cropped['gt_keypoints'])
        # surviving rows are renumbered in order
        np.testing.assert_array_equal(cropped['box_to_gt_ind_map'], np.arange(n_gt))
        old_masks = _masks(entry['segms'], h, w)
        new_masks = _masks(cropped['segms'], ch, cw)
        # the kept rows: those the box rule keeps, less objects whose polygons left the window
        survivors = _expected_survivors(entry, x0, y0, cw, ch)
        j = 0
        for i, box in survivors:
            ref = old_masks[i][y0:y0 + ch, x0:x0 + cw]
            if j < n_gt and np.allclose(cropped['boxes'][j], box, atol=1e-3):
                # the cropped mask is the crop of the original mask
                assert (new_masks[j] != ref).sum() <= 0.02 * max(ref.sum(), 1) + 4
                # keypoints moved with the window; those outside it are unlabeled
                old_kp, new_kp = entry['gt_keypoints'][i], cropped['gt_keypoints'][j]
                for k in range(old_kp.shape[1]):
                    x, y, v = old_kp[:, k]
                    if v > 0 and x0 <= x < x0 + cw and y0 <= y < y0 + ch:
                        assert tuple(new_kp[:, k]) == (x - x0, y - y0, v)
                        checked_kps += 1
                    else:
                        assert tuple(new_kp[:, k]) == (0, 0, 0)
                checked_masks += 1
                j += 1
            else:  # dropped although its box meets the window: nothing of its polygon is in it
                assert ref.sum() <= 2
        assert j == n_gt
        removed += len(entry['boxes']) - n_gt
    assert checked_masks > 50 and checked_kps > 100 and removed > 0


def test_crop_of_rle_crowd_is_exact(kp_roidb):
    entry = next(e for e in kp_roidb if e['is_crowd'].any() and not e['flipped'])
    i = int(np.where(entry['is_crowd'])[0][0])
    h, w = entry['height'], entry['width']
    mask = mask_util.decode(segm_utils.rle_from_segm(entry['segms'][i], h, w))
    ys, xs = np.where(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    cropped = minibatch.crop_entry(entry, x0, y0, w - x0, h - y0)
    j = int(np.where(cropped['is_crowd'])[0][0])
    np.testing.assert_array_equal(mask_util.decode(cropped['segms'][j]), mask[y0:, x0:])
    assert cropped['seg_areas'][j] == mask.sum()


def test_crop_window_keeps_all_boxes_when_they_fit():
    entry = {'width': 400, 'height': 100, 'is_crowd': np.zeros(2, bool), 'segms': [[], []],
             'boxes': np.array([[120, 10, 150, 50], [190, 20, 210, 90]], np.float32)}
    starts = set()
    for seed in range(50):
        x0, y0, cw, ch = minibatch.choose_crop_window(entry, 2.0, np.random.RandomState(seed))
        assert (y0, cw, ch) == (0, 200, 100)
        assert x0 <= 120 and x0 + cw - 1 >= 210
        starts.add(x0)
    assert min(starts) >= 11 and max(starts) <= 120 and len(starts) > 10
    tall = dict(entry, width=100, height=400, boxes=entry['boxes'][:, [1, 0, 3, 2]])
    x0, y0, cw, ch = minibatch.choose_crop_window(tall, 0.5, np.random.RandomState(0))
    assert (x0, cw, ch) == (0, 100, 200) and y0 <= 120 and y0 + 199 >= 210


def test_minibatch_entry_scales_everything(kp_roidb):
    entry = next(e for e in kp_roidb if e['flipped'] and e['has_visible_keypoints'])
    im, scale, gt = minibatch.get_minibatch_entry(entry, 300, 500, MEANS)
    h, w = entry['height'], entry['width']
    assert scale == pytest.approx(min(300. / min(h, w), 500. / max(h, w)))
    assert im.shape == (int(round(h * scale)), int(round(w * scale)), 3)
    np.testing.assert_allclose(gt['boxes'], entry['boxes'] * scale, rtol=1e-6)
    np.testing.assert_allclose(gt['gt_keypoints'][:, :2], entry['gt_keypoints'][:, :2] * scale,
                               rtol=1e-6)
    np.testing.assert_array_equal(gt['gt_keypoints'][:, 2], entry['gt_keypoints'][:, 2])
    for seg, orig in zip(gt['segms'], entry['segms']):
        if segm_utils.is_poly(orig):
            np.testing.assert_allclose(seg[0], np.asarray(orig[0]) * scale, rtol=1e-5)
        else:
            assert seg['size'] == list(im.shape[:2])
    # the flipped entry reads the mirrored image; Detectron's blob bit for bit: each pixel minus
    # the float64 means in float64, rounded once to float32, then cv2.resize
    raw = cv2.imread(entry['image'])[:, ::-1]
    diff = (raw.astype(np.float64) - MEANS.reshape(3).astype(np.float64)).astype(np.float32)
    expected = cv2.resize(diff, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(im, expected)


def test_minibatch_entry_carries_the_original_scale_ground_truth(kp_roidb):
    """Detectron computes box, mask and keypoint targets from the roidb's own values: the loader
    passes them beside the blob-scale ones, untouched (float32), also after an aspect crop."""
    entry = next(e for e in kp_roidb if e['has_visible_keypoints']
                 and any(segm_utils.is_poly(s) for s in e['segms']))
    for crop in (False, True):
        e = dict(entry, need_crop=crop)
        ratio = 0.5 if e['width'] >= e['height'] else 2.0
        im, scale, gt = minibatch.get_minibatch_entry(e, 300, 500, MEANS, crop_ratio=ratio,
                                                      rng=np.random.RandomState(3))
        if crop:
            window = minibatch.choose_crop_window(e, ratio, np.random.RandomState(3))
            e = minibatch.crop_entry(e, *window)
            assert gt['crop_box'] is not None
        s = np.float32(scale)
        np.testing.assert_array_equal(gt['boxes_orig'], e['boxes'].astype(np.float32))
        np.testing.assert_array_equal(gt['boxes'], gt['boxes_orig'] * s)
        np.testing.assert_array_equal(gt['gt_keypoints_orig'],
                                      e['gt_keypoints'].astype(np.float32))
        assert len(gt['segms_orig']) == len(e['segms'])
        for seg, orig in zip(gt['segms_orig'], e['segms']):
            if segm_utils.is_poly(orig):
                assert len(seg) == len(orig)
                for p, q in zip(seg, orig):
                    assert p.dtype == np.float32
                    np.testing.assert_array_equal(p, np.array(q, dtype=np.float32))
            else:
                assert seg == orig


def test_unreadable_image_names_the_file(kp_roidb, tmp_path):
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not a jpeg')
    with pytest.raises(minibatch.ImageLoadError, match='bad.jpg'):
        minibatch.load_image(dict(kp_roidb[0], image=str(bad)))
