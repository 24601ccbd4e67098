"""COCO evaluation: result writing (+1 boxes, RLE, category ids, keypoint rows), AP of ground
truth fed back as detections, proposal recall, and the summary formatting."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.datasets import json_dataset_evaluator as evaluator
from pydetectron.datasets import task_evaluation
from pydetectron.utils import segms as segm_utils


def _dataset(coco_mini, ann):
    from pydetectron.datasets.json_dataset import JsonDataset
    return JsonDataset('coco_json:' + os.path.join(os.path.abspath(coco_mini), 'annotations', ann))


@pytest.fixture(scope='module')
def instances_val(coco_mini):
    ds = _dataset(coco_mini, 'instances_val2017.json')
    return ds, ds.get_roidb(gt=True)


@pytest.fixture(scope='module')
def keypoints_val(coco_mini):
    ds = _dataset(coco_mini, 'person_keypoints_val2017.json')
    return ds, ds.get_roidb(gt=True)


def _gt_as_detections(dataset, roidb, with_masks=True):
    """all_boxes / all_segms in Detectron's [class][image] layout from the non-crowd ground truth,
    masks rasterised in the image and RLE-encoded exactly as ``segm_results`` encodes them."""
    num_classes = dataset.num_classes
    all_boxes = [[[] for _ in roidb] for _ in range(num_classes)]
    all_segms = [[[] for _ in roidb] for _ in range(num_classes)]
    rng = np.random.RandomState(0)
    for i, entry in enumerate(roidb):
        for j in range(1, num_classes):
            sel = np.where((entry['gt_classes'] == j) & ~entry['is_crowd'])[0]
            if len(sel) == 0:
                continue
            scores = rng.uniform(0.5, 1.0, size=len(sel)).astype(np.float32)
            all_boxes[j][i] = np.hstack((entry['boxes'][sel], scores[:, None])).astype(np.float32)
            if with_masks:
                rles = []
                for k in sel:
                    m = segm_utils.segm_to_mask(entry['segms'][k], entry['height'], entry['width'])
                    rles.append(mask_util.encode(np.array(m[:, :, np.newaxis], order='F'))[0])
                all_segms[j][i] = rles
    return all_boxes, all_segms


def test_ground_truth_boxes_and_masks_score_ap_one(instances_val, tmp_path):
    dataset, roidb = instances_val
    all_boxes, all_segms = _gt_as_detections(dataset, roidb)
    box_eval = evaluator.evaluate_boxes(dataset, all_boxes, str(tmp_path), use_salt=False)
    mask_eval = evaluator.evaluate_masks(dataset, all_boxes, all_segms, str(tmp_path),
                                         use_salt=False)
    # AP@[.5:.95], AP50, AP75: any +1 slip, wrong category id or broken RLE breaks these
    np.testing.assert_allclose(box_eval.stats[:3], 1.0, atol=1e-6)
    np.testing.assert_allclose(mask_eval.stats[:3], 1.0, atol=1e-6)
    # the result files were written and pickled evaluations saved, under Detectron's names
    assert (tmp_path / ('bbox_%s_results.json' % dataset.name)).exists()
    assert (tmp_path / ('segmentations_%s_results.json' % dataset.name)).exists()
    assert (tmp_path / 'detection_results.pkl').exists()
    assert (tmp_path / 'segmentation_results.pkl').exists()
    mean_ap, per_class = evaluator.per_class_ap(box_eval)
    assert mean_ap == pytest.approx(1.0)
    present = ~np.isnan(per_class)
    assert present.sum() > 10 and np.all(per_class[present] == pytest.approx(1.0))


def test_shifted_boxes_lose_ap(instances_val, tmp_path):
    """A control for the test above: boxes one pixel too large (a +1 slip) score below 1."""
    dataset, roidb = instances_val
    all_boxes, _ = _gt_as_detections(dataset, roidb, with_masks=False)
    for per_image in all_boxes[1:]:
        for dets in per_image:
            if len(dets):
                dets[:, 2:4] += 1  # small objects fall below IoU 0.95
    box_eval = evaluator.evaluate_boxes(dataset, all_boxes, str(tmp_path), use_salt=False)
    assert box_eval.stats[0] < 0.995
    assert box_eval.stats[1] == pytest.approx(1.0)  # all still matched at IoU 0.5


def test_ground_truth_keypoints_score_ap_one(keypoints_val, tmp_path):
    dataset, roidb = keypoints_val
    all_boxes = [[[] for _ in roidb] for _ in range(dataset.num_classes)]
    all_keyps = [[[] for _ in roidb] for _ in range(dataset.num_classes)]
    for i, entry in enumerate(roidb):
        kps = entry['gt_keypoints']  # (G, 3, K): x, y, v
        # COCO ignores people without labeled keypoints; detect the others
        sel = np.where(~entry['is_crowd'] & (kps[:, 2, :] > 0).any(axis=1))[0]
        if len(sel) == 0:
            continue
        scores = np.linspace(0.9, 0.6, len(sel)).astype(np.float32)
        all_boxes[1][i] = np.hstack((entry['boxes'][sel], scores[:, None])).astype(np.float32)
        # (4, K) rows x, y, logit, prob; the writer drops v and writes visibility 1
        all_keyps[1][i] = [np.vstack((kps[k, :2].astype(np.float32),
                                      np.full((2, kps.shape[2]), 5.0, np.float32)))
                           for k in sel]
    kp_eval = evaluator.evaluate_keypoints(dataset, all_boxes, all_keyps, str(tmp_path),
                                           use_salt=False)
    np.testing.assert_allclose(kp_eval.stats[:3], 1.0, atol=1e-6)
    with open(tmp_path / ('keypoints_%s_results.json' % dataset.name)) as f:
        res = json.load(f)
    assert len(res[0]['keypoints']) == 3 * dataset.num_keypoints
    assert set(res[0]['keypoints'][2::3]) == {1}


def test_writers_use_plus_one_widths_json_ids_and_text_rles(instances_val):
    dataset, roidb = instances_val
    n = len(roidb)
    # contiguous class 12 is 'stop sign', json id 13 (COCO skips id 12)
    j = dataset.classes.index('stop sign')
    assert j == 12 and dataset.contiguous_category_id_to_json_id[j] == 13
    all_boxes = [[[] for _ in range(n)] for _ in range(dataset.num_classes)]
    all_segms = [[[] for _ in range(n)] for _ in range(dataset.num_classes)]
    all_boxes[j][3] = np.array([[10, 20, 29, 49, 0.75]], np.float32)
    mask = np.zeros((roidb[3]['height'], roidb[3]['width']), np.uint8)
    mask[20:50, 10:30] = 1
    all_segms[j][3] = [mask_util.encode(np.asfortranarray(mask))]
    image_id = sorted(dataset.COCO.getImgIds())[3]

    boxes = evaluator.coco_bbox_results(dataset, all_boxes)
    assert boxes == [{'image_id': image_id, 'category_id': 13, 'bbox': [10.0, 20.0, 20.0, 30.0],
                      'score': 0.75}]
    segms = evaluator.coco_segms_results(dataset, all_boxes, all_segms)
    assert segms[0]['category_id'] == 13 and isinstance(segms[0]['segmentation']['counts'], str)
    json.dumps(segms)  # JSON-serialisable
    decoded = mask_util.decode({'size': segms[0]['segmentation']['size'],
                                'counts': segms[0]['segmentation']['counts'].encode()})
    assert (decoded == mask).all()


def test_keypoint_confidence_modes(keypoints_val):
    dataset, roidb = keypoints_val
    n = len(roidb)
    all_boxes = [[[] for _ in range(n)] for _ in range(2)]
    all_keyps = [[[] for _ in range(n)] for _ in range(2)]
    all_boxes[1][0] = np.array([[0, 0, 9, 9, 0.8]], np.float32)
    kps = np.zeros((4, 17), np.float32)
    kps[0], kps[1] = np.arange(17), 2 * np.arange(17)
    kps[2], kps[3] = 3.0, 0.25
    all_keyps[1][0] = [kps]
    score = {m: evaluator.coco_keypoint_results(dataset, all_boxes, all_keyps, m)[0]['score']
             for m in ('bbox', 'logit', 'prob')}
    assert score == {'bbox': pytest.approx(0.8), 'logit': 3.0, 'prob': 0.25}
    res = evaluator.coco_keypoint_results(dataset, all_boxes, all_keyps)[0]
    assert res['keypoints'][:6] == [0.0, 0.0, 1.0, 1.0, 2.0, 1.0]
    with pytest.raises(ValueError, match='KEYPOINT_CONFIDENCE'):
        evaluator.coco_keypoint_results(dataset, all_boxes, all_keyps, 'median')


def test_layout_mismatch_is_a_clear_error(instances_val):
    dataset, roidb = instances_val
    all_boxes = [[[] for _ in range(len(roidb) - 1)] for _ in range(dataset.num_classes)]
    with pytest.raises(ValueError, match='one entry per image'):
        evaluator.coco_bbox_results(dataset, all_boxes)


def test_no_detections_score_zero(instances_val, tmp_path):
    dataset, roidb = instances_val
    all_boxes = [[[] for _ in roidb] for _ in range(dataset.num_classes)]
    coco_eval = evaluator.evaluate_boxes(dataset, all_boxes, str(tmp_path), use_salt=False)
    assert coco_eval.stats[0] == pytest.approx(0.0, abs=1e-9) or coco_eval.stats[0] == -1


class _FakeDataset:
    name = 'fake'


def test_proposal_recall_hand_computed():
    # gt: two boxes; proposals (best first): exact copy of gt 0, a box with IoU 0.6 to gt 1
    gt = np.array([[0, 0, 9, 9], [100, 100, 119, 119]], np.float32)
    # IoU([100,100,119,119], [100,100,119,111]) = (20*12) / (20*20) = 0.6
    props = np.array([[0, 0, 9, 9], [100, 100, 119, 111], [300, 300, 310, 310]], np.float32)
    entry = {'boxes': np.vstack((gt, props)), 'gt_classes': np.array([1, 2, 0, 0, 0]),
             'is_crowd': np.zeros(5, bool), 'seg_areas': np.array([100., 400., 0, 0, 0])}
    stats = evaluator.evaluate_box_proposals(_FakeDataset(), [entry])
    # thresholds .5:.95: gt 0 recalled at all 10, gt 1 at 0.5, 0.55, 0.6 -> (10 + 3) / 20
    assert stats['num_pos'] == 2
    np.testing.assert_allclose(stats['gt_overlaps'], [0.6, 1.0], rtol=1e-6)
    assert stats['ar'] == pytest.approx(13 / 20.)
    # limit=1 keeps only the first proposal: gt 1 is never covered
    assert evaluator.evaluate_box_proposals(_FakeDataset(), [entry], limit=1)['ar'] == \
        pytest.approx(10 / 20.)
    # 'small' (area < 32^2) holds both gt boxes; 'large' none
    assert evaluator.evaluate_box_proposals(_FakeDataset(), [entry], area='large')['num_pos'] == 0
    res = task_evaluation.evaluate_box_proposals(_FakeDataset(), [entry])
    assert list(res['fake']['box_proposal']) == ['AR@100', 'ARs@100', 'ARm@100', 'ARl@100',
                                                 'AR@1000', 'ARs@1000', 'ARm@1000', 'ARl@1000']
    assert res['fake']['box_proposal']['AR@100'] == pytest.approx(0.65)
    with pytest.raises(ValueError, match='area range'):
        evaluator.evaluate_box_proposals(_FakeDataset(), [entry], area='huge')


def test_copy_paste_summary_format():
    results = {'coco_2017_val': task_evaluation._empty_results('box')}
    results['coco_2017_val']['box']['AP'] = 0.37412
    lines = task_evaluation.copy_paste_friendly_lines(results)
    assert lines == ['copypaste: Dataset: coco_2017_val', 'copypaste: Task: box',
                     'copypaste: AP,AP50,AP75,APs,APm,APl',
                     'copypaste: 0.3741,-1.0000,-1.0000,-1.0000,-1.0000,-1.0000']
