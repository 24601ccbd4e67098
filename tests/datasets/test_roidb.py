"""datasets.roidb: flipping, filtering, bbox targets and aspect ranking of the training roidb."""
import logging
import os

import numpy as np
import pycocotools.mask as mask_util

from pydetectron.datasets import roidb as roidb_utils
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.utils import segms as segm_utils


def _spec(coco_mini, ann, split):
    return 'coco_json:%s:%s' % (os.path.join(coco_mini, 'annotations', ann),
                                os.path.join(coco_mini, 'images', split))


def _kp_dataset(coco_mini):
    return JsonDataset(_spec(coco_mini, 'person_keypoints_train2017.json', 'train2017'))


def _rle_mask(segm, h, w):
    return mask_util.decode(segm_utils.rle_from_segm(segm, h, w))


def test_flip_twice_is_identity(coco_mini, fresh_cfg):
    ds = _kp_dataset(coco_mini)
    for entry in ds.get_roidb():
        twice = roidb_utils.flip_entry(roidb_utils.flip_entry(entry, ds), ds)
        assert twice['flipped'] is False
        # float32 boxes: W - (W - x - 1) - 1 rounds back to x within an ulp of 640
        np.testing.assert_allclose(twice['boxes'], entry['boxes'], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(twice['gt_keypoints'], entry['gt_keypoints'])
        for a, b in zip(twice['segms'], entry['segms']):
            if segm_utils.is_poly(b):
                for pa, pb in zip(a, b):
                    np.testing.assert_allclose(pa, pb, atol=1e-6)
            else:
                h, w = entry['height'], entry['width']
                np.testing.assert_array_equal(_rle_mask(a, h, w), _rle_mask(b, h, w))


def test_flip_mirrors_boxes_and_swaps_keypoints(coco_mini, fresh_cfg):
    ds = _kp_dataset(coco_mini)
    names = ds.keypoints
    left_eye, right_eye = names.index('left_eye'), names.index('right_eye')
    nose = names.index('nose')
    checked = 0
    for entry in ds.get_roidb():
        w = entry['width']
        flipped = roidb_utils.flip_entry(entry, ds)
        assert flipped['flipped'] is True
        np.testing.assert_allclose(flipped['boxes'][:, 0], w - entry['boxes'][:, 2] - 1)
        np.testing.assert_allclose(flipped['boxes'][:, 2], w - entry['boxes'][:, 0] - 1)
        kp, fkp = entry['gt_keypoints'], flipped['gt_keypoints']
        for g in range(len(kp)):
            # the flipped left eye is the mirrored right eye, and the nose stays the nose
            if kp[g, 2, right_eye] > 0:
                assert fkp[g, 0, left_eye] == w - kp[g, 0, right_eye] - 1
                assert fkp[g, 1, left_eye] == kp[g, 1, right_eye]
                assert fkp[g, 2, left_eye] == kp[g, 2, right_eye]
                checked += 1
            if kp[g, 2, nose] > 0:
                assert fkp[g, 0, nose] == w - kp[g, 0, nose] - 1
            else:
                assert fkp[g, 0, nose] == 0  # COCO: unlabeled keypoints keep x = y = 0
        for segm, fsegm in zip(entry['segms'], flipped['segms']):
            if not segm_utils.is_poly(segm):
                h = entry['height']
                np.testing.assert_array_equal(_rle_mask(fsegm, h, w), _rle_mask(segm, h, w)[:, ::-1])
    assert checked > 10


def test_combined_roidb_flips_filters_and_ranks(coco_mini, fresh_cfg, caplog):
    fresh_cfg.TRAIN.USE_FLIPPED = True
    names = (_spec(coco_mini, 'instances_train2017.json', 'train2017'),)
    ds = JsonDataset(names[0])
    plain = ds.get_roidb()
    with caplog.at_level(logging.INFO):
        roidb, ratio_list, ratio_index = roidb_utils.combined_roidb_for_training(names, ())
    usable = [e for e in plain if (e['max_overlaps'] >= 0).any()]
    assert len(roidb) == 2 * len(usable)
    assert [e['flipped'] for e in roidb] == [False] * len(usable) + [True] * len(usable)
    assert [e['id'] for e in roidb[len(usable):]] == [e['id'] for e in usable]
    assert 'Filtered %d roidb entries' % (2 * (len(plain) - len(usable))) in caplog.text
    # ratios sorted, indexing the roidb
    assert np.all(np.diff(ratio_list) >= 0) and sorted(ratio_index) == list(range(len(roidb)))
    np.testing.assert_allclose(ratio_list, [roidb[i]['width'] / roidb[i]['height']
                                            for i in ratio_index])
    assert not any(e['need_crop'] for e in roidb)
    for e in roidb:
        targets = e['bbox_targets']
        assert targets.shape == (len(e['boxes']), 5)
        gt = ~e['is_crowd']
        # a ground-truth box regresses onto itself: its class and zero deltas; crowds: nothing
        np.testing.assert_array_equal(targets[gt, 0], e['gt_classes'][gt])
        np.testing.assert_allclose(targets[gt, 1:], 0, atol=1e-6)
        assert not targets[e['is_crowd']].any()


def test_filter_for_training(coco_mini, fresh_cfg, tmp_path):
    ds = _kp_dataset(coco_mini)
    roidb = ds.get_roidb()
    only_crowd = [e for e in roidb if len(e['boxes']) and e['is_crowd'].all()]
    no_kps = [e for e in roidb if not e['has_visible_keypoints']]
    assert no_kps
    kept = roidb_utils.filter_for_training(roidb)
    assert not any(e in kept for e in only_crowd)
    assert not any(len(e['boxes']) == 0 for e in kept)
    fresh_cfg.MODEL.KEYPOINTS_ON = True
    kept_kp = roidb_utils.filter_for_training(roidb)
    assert all(e['has_visible_keypoints'] for e in kept_kp) and len(kept_kp) < len(kept)
    # an entry whose file has gone is skipped, not fatal
    gone = dict(kept_kp[0], image=str(tmp_path / 'gone.jpg'))
    assert len(roidb_utils.filter_for_training(kept_kp + [gone])) == len(kept_kp)


def test_bbox_targets_for_proposals(fresh_cfg):
    fresh_cfg.MODEL.BBOX_REG_WEIGHTS = (10., 10., 5., 5.)
    entry = {'boxes': np.array([[0, 0, 9, 9], [2, 0, 11, 9], [50, 50, 60, 60]], np.float32),
             'gt_classes': np.array([3, 0, 0], np.int32), 'is_crowd': np.zeros(3, bool),
             'max_overlaps': np.array([1., 8 / 12., 0.]), 'max_classes': np.array([3, 3, 0])}
    targets = roidb_utils._compute_targets(entry)
    # proposal 1 is the gt shifted right by 2 pixels of a width of 10: dx = 10 * (-2 / 10)
    np.testing.assert_allclose(targets, [[3, 0, 0, 0, 0], [3, -2., 0, 0, 0], [0, 0, 0, 0, 0]],
                               atol=1e-6)
    fresh_cfg.MODEL.CLS_AGNOSTIC_BBOX_REG = True
    assert roidb_utils._compute_targets(entry)[1, 0] == 1


def test_rank_for_training_with_aspect_cropping(fresh_cfg):
    fresh_cfg.TRAIN.ASPECT_CROPPING = True
    fresh_cfg.TRAIN.ASPECT_HI, fresh_cfg.TRAIN.ASPECT_LO = 2.0, 0.5
    roidb = [{'width': w, 'height': h} for w, h in ((300, 100), (100, 100), (100, 250), (180, 100))]
    ratio_list, ratio_index = roidb_utils.rank_for_training(roidb)
    np.testing.assert_allclose(ratio_list, [0.5, 1.0, 1.8, 2.0])
    np.testing.assert_array_equal(ratio_index, [2, 1, 3, 0])
    assert [e['need_crop'] for e in roidb] == [True, False, True, False]
