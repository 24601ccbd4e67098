"""Cityscapes: the instance-level evaluator (datasets/cityscapes_evaluator.py) against APs computed
by hand from the benchmark's definition, and a Cityscapes-layout folder as a dataset
(datasets/cityscapes.py), built here."""
import os

import cv2
import numpy as np
import pytest

from pydetectron.datasets import cityscapes
from pydetectron.datasets import dataset_catalog as dc
from pydetectron.datasets.cityscapes_evaluator import OVERLAPS, evaluate_instances

CAR, BUS, PERSON = 26, 28, 24


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def hand_case():
    """One 40 x 60 image:
        car A   26001  rows  0-9,  cols 0-19   200 px
        car B   26002  rows 10-19, cols 0-14   150 px
        car C   26003  rows 20-24, cols 0-9     50 px (< 100: not an instance to find)
        bus D   28001  rows 30-39, cols 40-59  200 px (nobody predicts buses)
        void    (label 4, 'static')  rows 0-9, cols 40-59
        a car group region (label 26) rows 20-29, cols 40-59
    Predictions (car):
        p1 0.9  exactly A                                   IoU 1
        p2 0.8  B's rows 10-19, cols 0-11 + cols 15-17       120 + 30 px: IoU 120 / 180 = 2/3
        p3 0.7  inside the void region                      ignored (all its pixels are void)
        p4 0.6  on plain background rows 30-39, cols 0-9    a false positive at every threshold
        p5 0.5  exactly C (a small instance)                IoU 1 with C: never counted
        p6 0.95 half of the group region                    ignored (all its pixels are group;
                                                            counted, it would outrank p1)
    """
    shape = (40, 60)
    gt = np.full(shape, 7, dtype=np.int32)           # road
    gt[0:10, 0:20] = 26001
    gt[10:20, 0:15] = 26002
    gt[20:25, 0:10] = 26003
    gt[30:40, 40:60] = 28001
    gt[0:10, 40:60] = 4
    gt[20:30, 40:60] = 26
    p2 = _rect(shape, 10, 20, 0, 12) | _rect(shape, 10, 20, 15, 18)
    preds = [(gt == 26001, CAR, 0.9), (p2, CAR, 0.8), (_rect(shape, 0, 10, 40, 60), CAR, 0.7),
             (_rect(shape, 30, 40, 0, 10), CAR, 0.6), (gt == 26003, CAR, 0.5),
             (_rect(shape, 20, 30, 40, 50), CAR, 0.95)]
    return gt, preds


# Car, by hand. Thresholds t < 2/3 (0.5, 0.55, 0.6, 0.65): A hit at .9, B hit at .8, p4 false at
# .6, no miss. Ascending scores .6(F) .8(T) .9(T): at >= .6 tp 2 fp 1 -> P 2/3 R 1; at >= .8
# P 1 R 1; at >= .9 P 1 R 1/2; then (R 0, P 1). Recalls padded [1, 1, 1, .5, 0, 0]: widths
# (1-1)/2, (1-.5)/2, (1-0)/2, (.5-0)/2 = 0, .25, .5, .25 -> AP = 0 + .25 + .5 + .25 = 1.
# t >= 2/3 (0.7 ... 0.95, six thresholds): B missed (1 hard false negative), p2 a false positive
# at .8 (none of it is void or group), A hit: .6(F) .8(F) .9(T): at >= .6 tp 1 fp 2 fn 1 -> P 1/3
# R 1/2; >= .8 P 1/2 R 1/2; >= .9 P 1 R 1/2; (R 0, P 1). Padded recalls [.5, .5, .5, .5, 0, 0]:
# widths 0, 0, .25, .25 -> AP = 1 * .25 + 1 * .25 = .5.
# 0.65 is np.arange's 0.6500000000000001 < 2/3. Car AP = (4 * 1 + 6 * .5) / 10 = .7, AP50 = 1.
CAR_AP = (4 * 1.0 + 6 * 0.5) / 10
# Bus: ground truth, no prediction: 0. Others: no ground truth: NaN, left out of the mean.


def test_hand_computed_case():
    gt, preds = hand_case()
    res = evaluate_instances([gt], [preds])
    np.testing.assert_allclose(OVERLAPS[:4], [.5, .55, .6, .65])
    car = list(dict(cityscapes.INSTANCE_CLASSES)).index('car')
    np.testing.assert_allclose(res['ap'][car], [1, 1, 1, 1, .5, .5, .5, .5, .5, .5], atol=1e-12)
    assert res['classes']['car'] == pytest.approx({'AP': CAR_AP, 'AP50': 1.0}, abs=1e-12)
    assert res['classes']['bus'] == {'AP': 0.0, 'AP50': 0.0}
    assert np.isnan(res['classes']['person']['AP'])
    assert res['AP'] == pytest.approx((CAR_AP + 0.0) / 2, abs=1e-12)
    assert res['AP50'] == pytest.approx(0.5, abs=1e-12)


def test_duplicates_and_ignore_rules():
    gt, _ = hand_case()
    shape = gt.shape
    a = gt == 26001
    # a duplicate of A scored higher than the first: the lower of the two is the false positive
    res = evaluate_instances([gt], [[(a, CAR, 0.3), (a, CAR, 0.9)]])
    # .3(F) .9(T), B missed: >= .3 P 1/2 R 1/2, >= .9 P 1 R 1/2 -> widths 0, .25, .25 -> .5
    assert res['classes']['car']['AP50'] == pytest.approx(0.5, abs=1e-12)
    # a prediction 70% on void (rows 0-9, cols 37-46; cols 40-46 void), scored above the hit:
    # ignored while .7 > t; a false positive from t = 0.7000000000000001 on
    v70 = _rect(shape, 0, 10, 37, 47)
    res = evaluate_instances([gt], [[(a, CAR, 0.9), (v70, CAR, 0.95)]])
    car = list(dict(cityscapes.INSTANCE_CLASSES)).index('car')
    # ignored: .9(T), B missed: P 1 R 1/2, then (0, 1): widths .25, .25 -> .5
    # counted: .9(T) .95(F): >= .9 P 1/2 R 1/2, >= .95 P 0 R 0, (0, 1): padded recalls
    # [.5, .5, 0, 0, 0] -> widths .25, .25, 0 -> .5 * .25 = .125
    np.testing.assert_allclose(res['ap'][car], [.5, .5, .5, .5] + [.125] * 6, atol=1e-12)
    # an empty mask is no prediction: the bus class stays without predictions -> 0, not NaN
    res = evaluate_instances([gt], [[(np.zeros(shape, bool), BUS, 0.9)]])
    assert res['classes']['bus']['AP'] == 0.0


# ------------------------------------------------------------------------------------------------
# The folder layout as a dataset, and the evaluator on it
# ------------------------------------------------------------------------------------------------

def make_cityscapes_folder(root, coco_mini, split='val'):
    """One image of coco_mini in the layout, with the hand case's instances scaled into it."""
    import glob
    src = sorted(glob.glob(os.path.join(coco_mini, 'images', 'val2017', '*.jpg')))[0]
    im = cv2.imread(src)
    h, w = im.shape[:2]
    gt = np.full((h, w), 7, dtype=np.uint16)
    gt[10:60, 10:90] = 26001
    gt[100:150, 10:60] = 24001
    gt[200:260, 100:200] = 28001
    gt[0:5, :] = 1       # ego vehicle (void)
    for sub, name, data in (('leftImg8bit', 'aachen_000000_000019_leftImg8bit.png', im),
                            ('gtFine', 'aachen_000000_000019_gtFine_instanceIds.png', gt)):
        d = os.path.join(root, sub, split, 'aachen')
        os.makedirs(d, exist_ok=True)
        cv2.imwrite(os.path.join(d, name), data)
    return str(root), gt.astype(np.int32)


def test_cityscapes_folder_trains_and_evaluates(tmp_path, coco_mini, fresh_cfg):
    from pydetectron.datasets import task_evaluation
    from pydetectron.datasets.json_dataset import JsonDataset
    import pycocotools.mask as mask_util
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    root, gt = make_cityscapes_folder(str(tmp_path / 'cityscapes'), coco_mini)
    (name,), num_classes = dc.resolve_dataset_arg('cityscapes:%s:val' % root, training=False)
    assert num_classes == 9 and dc.get_cityscapes_info(name) == (root, 'val')
    ds = JsonDataset(name)
    assert ds.classes == ['__background__', 'person', 'rider', 'car', 'truck', 'bus', 'train',
                          'motorcycle', 'bicycle']
    roidb = ds.get_roidb(gt=True)
    boxes = {ds.classes[c]: b.tolist() for c, b in zip(roidb[0]['gt_classes'], roidb[0]['boxes'])}
    assert boxes == {'car': [10, 10, 89, 59], 'person': [10, 100, 59, 149],
                     'bus': [100, 200, 199, 259]}
    # perfect masks for car and person, nothing for the bus: AP 1, 1, 0 -> mean 2/3
    all_boxes = [[[]] for _ in range(ds.num_classes)]
    all_segms = [[[]] for _ in range(ds.num_classes)]
    for cls, inst in (('car', 26001), ('person', 24001)):
        j = ds.classes.index(cls)
        all_boxes[j][0] = np.array([[0, 0, 1, 1, 0.9]], dtype=np.float32)
        all_segms[j][0] = [mask_util.encode(np.asfortranarray((gt == inst).astype(np.uint8)))]
    results = task_evaluation.evaluate_masks(ds, all_boxes, all_segms, str(tmp_path / 'out'))
    mask = results[name]['mask']
    assert mask['AP/car'] == 1.0 and mask['AP/person'] == 1.0 and mask['AP/bus'] == 0.0
    assert mask['AP'] == pytest.approx(2 / 3) and mask['AP50'] == pytest.approx(2 / 3)
    assert os.path.isfile(str(tmp_path / 'out' / 'cityscapes_instance_results.json'))


def test_catalog_entry_uses_the_raw_layout(tmp_path, coco_mini, fresh_cfg):
    fresh_cfg.DATA_DIR = str(tmp_path)
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    make_cityscapes_folder(str(tmp_path / 'cityscapes' / 'raw'), coco_mini, split='val')
    from pydetectron.datasets.json_dataset import JsonDataset
    ds = JsonDataset('cityscapes_fine_instanceonly_seg_val')
    assert len(ds.get_roidb()) == 1
    assert dc.get_cityscapes_info('cityscapes_fine_instanceonly_seg_val') == (
        str(tmp_path / 'cityscapes' / 'raw'), 'val')
