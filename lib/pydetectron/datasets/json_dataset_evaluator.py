"""COCO-style evaluation of results computed on a JSON (COCO-format) dataset.

The detections arrive in Detectron's test-time layout, indexed ``[class][image]``:
  all_boxes[j][i]  (n, 5) float32 array of x1, y1, x2, y2, score (inclusive corners, ``+1`` widths)
  all_segms[j][i]  list of n COCO RLEs, one per row of all_boxes[j][i]
  all_keyps[j][i]  list of n (4, K) arrays: x, y, logit, prob per keypoint
where j is the contiguous class index (0 = background, never written) and i the position of the
image in the dataset's roidb, which is sorted by COCO image id. The writers turn them into COCO
result JSONs (xywh boxes with w = x2 - x1 + 1, RLE counts as text, json category ids) and the
evaluators run pycocotools' COCOeval on those files.
"""
import json
import logging
import os
import pickle
import uuid

import numpy as np
from pycocotools.cocoeval import COCOeval

from pydetectron.utils import boxes as box_utils
from pydetectron.utils import keypoints as keypoint_utils

logger = logging.getLogger(__name__)

# Area ranges of Detectron's proposal recall (areas are segmentation areas, like COCO's).
_PROPOSAL_AREA_RANGES = {
    'all': [0 ** 2, 1e5 ** 2],
    'small': [0 ** 2, 32 ** 2],
    'medium': [32 ** 2, 96 ** 2],
    'large': [96 ** 2, 1e5 ** 2],
    '96-128': [96 ** 2, 128 ** 2],
    '128-256': [128 ** 2, 256 ** 2],
    '256-512': [256 ** 2, 512 ** 2],
    '512-inf': [512 ** 2, 1e5 ** 2],
}


# ---------------------------------------------------------------------------------------------- #
# Box, mask and keypoint evaluation
# ---------------------------------------------------------------------------------------------- #

def evaluate_boxes(json_dataset, all_boxes, output_dir, use_salt=True, cleanup=False):
    """Write the bbox results JSON and, on splits with annotations, evaluate it.

    Returns the COCOeval, or None for a split without annotations.
    """
    res_file = _results_file_name(output_dir, 'bbox', json_dataset.name, use_salt)
    write_coco_bbox_results_file(json_dataset, all_boxes, res_file)
    coco_eval = None
    if _has_annotations(json_dataset):
        coco_eval = do_coco_eval(json_dataset, res_file, 'bbox', output_dir)
    if cleanup:
        os.remove(res_file)
    return coco_eval


def evaluate_masks(json_dataset, all_boxes, all_segms, output_dir, use_salt=True, cleanup=False):
    """Write the segmentation results JSON and evaluate it (COCOeval 'segm') -> COCOeval or None."""
    res_file = _results_file_name(output_dir, 'segmentations', json_dataset.name, use_salt)
    write_coco_segms_results_file(json_dataset, all_boxes, all_segms, res_file)
    coco_eval = None
    if _has_annotations(json_dataset):
        coco_eval = do_coco_eval(json_dataset, res_file, 'segm', output_dir)
    if cleanup:
        os.remove(res_file)
    return coco_eval


def evaluate_keypoints(json_dataset, all_boxes, all_keyps, output_dir, use_salt=True,
                       cleanup=False, keypoint_confidence='bbox'):
    """Write the keypoint results JSON and evaluate it (COCOeval 'keypoints') -> COCOeval or None.

    ``keypoint_confidence`` is ``cfg.KRCNN.KEYPOINT_CONFIDENCE``: the score of a person is its
    box score ('bbox') or the mean over keypoints of the heatmap logit ('logit') or probability
    ('prob').
    """
    res_file = _results_file_name(output_dir, 'keypoints', json_dataset.name, use_salt)
    write_coco_keypoint_results_file(json_dataset, all_boxes, all_keyps, res_file,
                                     keypoint_confidence=keypoint_confidence)
    coco_eval = None
    if _has_annotations(json_dataset):
        coco_eval = do_coco_eval(json_dataset, res_file, 'keypoints', output_dir)
    if cleanup:
        os.remove(res_file)
    return coco_eval


def do_coco_eval(json_dataset, res_file, iou_type, output_dir=None, log=True):
    """Run COCOeval of type ``iou_type`` ('bbox', 'segm', 'keypoints') on a results JSON file.

    An empty results file scores all zeros (pycocotools' ``loadRes`` refuses an empty list).
    The COCOeval object is pickled to ``output_dir`` under Detectron's file names.
    """
    coco_gt = json_dataset.COCO
    with open(res_file) as f:
        results = json.load(f)
    coco_eval = COCOeval(coco_gt, _load_results(coco_gt, results), iou_type)
    if iou_type == 'keypoints':
        # COCOeval's falloffs are COCO's 17; other keypoint sets get one per keypoint.
        num_keypoints = getattr(json_dataset, 'num_keypoints', 0) or \
            len(coco_eval.params.kpt_oks_sigmas)
        coco_eval.params.kpt_oks_sigmas = keypoint_utils.keypoint_oks_sigmas(num_keypoints)
    # Restrict to the dataset's own images (Detectron's keypoint eval did; harmless for the others).
    coco_eval.params.imgIds = sorted(coco_gt.getImgIds())
    coco_eval.evaluate()
    coco_eval.accumulate()
    if log and iou_type != 'keypoints':
        log_detection_eval_metrics(json_dataset, coco_eval)
    coco_eval.summarize()
    if output_dir is not None:
        name = {'bbox': 'detection_results.pkl', 'segm': 'segmentation_results.pkl',
                'keypoints': 'keypoint_results.pkl'}[iou_type]
        eval_file = os.path.join(output_dir, name)
        with open(eval_file, 'wb') as f:
            pickle.dump(coco_eval, f, pickle.HIGHEST_PROTOCOL)
        logger.info('Wrote json eval results to: %s', eval_file)
    return coco_eval


def _load_results(coco_gt, results):
    if len(results) == 0:
        # A results COCO with no detections: every image scores zero instead of crashing.
        from pycocotools.coco import COCO
        coco_dt = COCO()
        coco_dt.dataset = {'images': list(coco_gt.dataset['images']),
                           'categories': list(coco_gt.dataset['categories']), 'annotations': []}
        coco_dt.createIndex()
        return coco_dt
    return coco_gt.loadRes(results)


# ---------------------------------------------------------------------------------------------- #
# Result writers: Detectron's [class][image] layout -> COCO result dicts
# ---------------------------------------------------------------------------------------------- #

def write_coco_bbox_results_file(json_dataset, all_boxes, res_file):
    # [{"image_id": 42, "category_id": 18, "bbox": [x, y, w, h], "score": 0.236}, ...]
    results = coco_bbox_results(json_dataset, all_boxes)
    _dump_results(results, res_file, 'bbox')


def write_coco_segms_results_file(json_dataset, all_boxes, all_segms, res_file):
    # [{"image_id": 42, "category_id": 18, "segmentation": {RLE}, "score": 0.236}, ...]
    results = coco_segms_results(json_dataset, all_boxes, all_segms)
    _dump_results(results, res_file, 'segmentation')


def write_coco_keypoint_results_file(json_dataset, all_boxes, all_keyps, res_file,
                                     keypoint_confidence='bbox'):
    # [{"image_id": 42, "category_id": 1, "keypoints": [x1, y1, v1, ...], "score": 0.9}, ...]
    results = coco_keypoint_results(json_dataset, all_boxes, all_keyps, keypoint_confidence)
    _dump_results(results, res_file, 'keypoint')


def coco_bbox_results(json_dataset, all_boxes):
    """COCO bbox result dicts for every class and image of ``all_boxes[class][image]``."""
    results = []
    for cls_ind, _, image_id, dets in _iter_class_image(json_dataset, all_boxes, 'all_boxes'):
        dets = np.asarray(dets, dtype=np.float64)
        xywh = box_utils.xyxy_to_xywh(dets[:, 0:4])  # w = x2 - x1 + 1 (Detectron's convention)
        cat_id = _json_category_id(json_dataset, cls_ind)
        results.extend({'image_id': image_id, 'category_id': cat_id,
                        'bbox': [float(v) for v in xywh[k]], 'score': float(dets[k, -1])}
                       for k in range(dets.shape[0]))
    return results


def coco_segms_results(json_dataset, all_boxes, all_segms):
    """COCO segmentation result dicts; ``all_segms[j][i][k]`` is the RLE of the box
    ``all_boxes[j][i][k]``."""
    results = []
    _check_layout(json_dataset, all_segms, 'all_segms')
    for cls_ind, i, image_id, dets in _iter_class_image(json_dataset, all_boxes, 'all_boxes'):
        rles = all_segms[cls_ind][i]
        if len(rles) != len(dets):
            raise ValueError('all_segms[%d] for image %d holds %d masks for %d boxes'
                             % (cls_ind, image_id, len(rles), len(dets)))
        cat_id = _json_category_id(json_dataset, cls_ind)
        results.extend({'image_id': image_id, 'category_id': cat_id,
                        'segmentation': _json_rle(rles[k]), 'score': float(dets[k][-1])}
                       for k in range(len(dets)))
    return results


def coco_keypoint_results(json_dataset, all_boxes, all_keyps, keypoint_confidence='bbox'):
    """COCO keypoint result dicts from (4, K) keypoint arrays (x, y, logit, prob).

    Every keypoint is written as visible (v = 1), as Detectron does: COCO's OKS ignores the
    detections' visibility flags.
    """
    if keypoint_confidence not in ('logit', 'prob', 'bbox'):
        raise ValueError("KRCNN.KEYPOINT_CONFIDENCE must be 'logit', 'prob' or 'bbox', got %r"
                         % (keypoint_confidence,))
    score_row = {'logit': 2, 'prob': 3}.get(keypoint_confidence)
    results = []
    _check_layout(json_dataset, all_keyps, 'all_keyps')
    for cls_ind, i, image_id, dets in _iter_class_image(json_dataset, all_boxes, 'all_boxes'):
        if cls_ind >= len(all_keyps):
            break
        kps_dets = all_keyps[cls_ind][i]
        if len(kps_dets) == 0:
            continue
        if len(kps_dets) != len(dets):
            raise ValueError('all_keyps[%d] for image %d holds %d poses for %d boxes'
                             % (cls_ind, image_id, len(kps_dets), len(dets)))
        cat_id = _json_category_id(json_dataset, cls_ind)
        for k, kps in enumerate(kps_dets):
            kps = np.asarray(kps, dtype=np.float64)  # (4, K)
            xyv = np.stack([kps[0], kps[1], np.ones(kps.shape[1])], axis=1).reshape(-1)
            if score_row is None:
                score = float(dets[k][-1])
            else:
                score = float(kps[score_row].mean())
            results.append({'image_id': image_id, 'category_id': cat_id,
                            'keypoints': [float(v) for v in xyv], 'score': score})
    return results


def _iter_class_image(json_dataset, all_res, what):
    """Yield (class index, image position, COCO image id, (n, 5) dets) for each non-empty entry.

    Background (class 0) is skipped; image positions follow the sorted COCO image ids.
    """
    image_ids = _check_layout(json_dataset, all_res, what)
    for cls_ind in range(1, min(len(all_res), len(json_dataset.classes))):
        for i, image_id in enumerate(image_ids):
            dets = all_res[cls_ind][i]
            if len(dets) == 0:
                continue
            yield cls_ind, i, image_id, dets


def _check_layout(json_dataset, all_res, what):
    """Check that every class of ``all_res`` has one entry per image; -> sorted COCO image ids."""
    image_ids = sorted(json_dataset.COCO.getImgIds())
    for cls_ind in range(1, min(len(all_res), len(json_dataset.classes))):
        if len(all_res[cls_ind]) != len(image_ids):
            raise ValueError(
                '%s[%d] has %d entries but dataset %s has %d images (expected one entry per '
                'image, in the order of sorted COCO image ids)'
                % (what, cls_ind, len(all_res[cls_ind]), json_dataset.name, len(image_ids)))
    return image_ids


def _json_category_id(json_dataset, cls_ind):
    return int(json_dataset.contiguous_category_id_to_json_id[cls_ind])


def _json_rle(rle):
    """An RLE whose ``counts`` is text, as JSON needs (pycocotools encodes them as bytes)."""
    counts = rle['counts']
    if isinstance(counts, bytes):
        counts = counts.decode('ascii')
    return {'size': [int(s) for s in rle['size']], 'counts': counts}


def _dump_results(results, res_file, what):
    logger.info('Writing %s results json to: %s', what, os.path.abspath(res_file))
    with open(res_file, 'w') as f:
        json.dump(results, f)


def _results_file_name(output_dir, prefix, dataset_name, use_salt):
    res_file = os.path.join(output_dir, prefix + '_' + dataset_name + '_results')
    if use_salt:
        res_file += '_{}'.format(uuid.uuid4())
    return res_file + '.json'


def _has_annotations(json_dataset):
    # Test splits come without annotations (COCO's image_info_*.json have no such list);
    # Detectron recognised them by 'test' in the name, which a user's dataset name may contain.
    return 'annotations' in json_dataset.COCO.dataset


# ---------------------------------------------------------------------------------------------- #
# Reporting
# ---------------------------------------------------------------------------------------------- #

def per_class_ap(coco_eval, iou_lo=0.5, iou_hi=0.95):
    """Mean AP over IoU thresholds [iou_lo, iou_hi] (area 'all', 100 detections)
    -> (mean, (C,) per class).

    A class without ground truth gets NaN. ``precision`` of COCOeval has axes
    (iou threshold, recall threshold, class, area range, max detections).
    """
    ind_lo = _iou_threshold_index(coco_eval, iou_lo)
    ind_hi = _iou_threshold_index(coco_eval, iou_hi)
    precision = coco_eval.eval['precision'][ind_lo:(ind_hi + 1), :, :, 0, -1]
    valid = precision > -1
    mean_ap = float(np.mean(precision[valid])) if valid.any() else float('nan')
    per_class = np.full(precision.shape[2], np.nan)
    for c in range(precision.shape[2]):
        p = precision[:, :, c]
        if (p > -1).any():
            per_class[c] = np.mean(p[p > -1])
    return mean_ap, per_class


def per_class_table(json_dataset, coco_eval):
    """Rows (class name, AP, AP50, AP75) per class with ground truth, in class order; AP is the
    mean over IoU 0.50:0.95 (area 'all', the largest number of detections)."""
    _, ap = per_class_ap(coco_eval, 0.5, 0.95)
    _, ap50 = per_class_ap(coco_eval, 0.5, 0.5)
    _, ap75 = per_class_ap(coco_eval, 0.75, 0.75)
    id_to_name = {c['id']: c['name'] for c in json_dataset.COCO.loadCats(coco_eval.params.catIds)}
    rows = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        if np.isnan(ap[k]):
            continue  # no ground truth of this class
        rows.append((id_to_name[cat_id], float(ap[k]), float(ap50[k]), float(ap75[k])))
    return rows


def precision_recall_curves(coco_eval, iou_thresh=0.5):
    """COCOeval's interpolated precision-recall curves at one IoU threshold (area 'all', the
    largest number of detections) -> (recall (R,), precision (C, R) with NaN for classes without
    ground truth)."""
    t = _iou_threshold_index(coco_eval, iou_thresh)
    precision = coco_eval.eval['precision'][t, :, :, 0, -1].T.astype(np.float64)  # (C, R)
    precision[precision < 0] = np.nan
    return np.asarray(coco_eval.params.recThrs), precision


def _iou_threshold_index(coco_eval, thr):
    inds = np.where(np.abs(coco_eval.params.iouThrs - thr) < 1e-5)[0]
    if len(inds) == 0:
        raise ValueError('IoU threshold %.2f is not among the evaluated ones %s'
                         % (thr, list(coco_eval.params.iouThrs)))
    return int(inds[0])


def log_detection_eval_metrics(json_dataset, coco_eval):
    """Log Detectron's mean and per-category AP @ IoU=[0.50, 0.95] (classes in dataset order)."""
    mean_ap, per_class = per_class_ap(coco_eval)
    logger.info('~~~~ Mean and per-category AP @ IoU=[0.50,0.95] ~~~~')
    logger.info('%.1f', 100 * mean_ap)
    # COCOeval's class axis follows params.catIds (sorted json ids), i.e. contiguous order.
    for cls_ind, cls in enumerate(json_dataset.classes):
        if cls == '__background__' or cls_ind - 1 >= len(per_class):
            continue
        logger.info('%.1f  %s', 100 * per_class[cls_ind - 1], cls)
    logger.info('~~~~ Summary metrics ~~~~')


# ---------------------------------------------------------------------------------------------- #
# Proposal recall
# ---------------------------------------------------------------------------------------------- #

def evaluate_box_proposals(json_dataset, roidb, thresholds=None, area='all', limit=None,
                           class_specific=False):
    """Detectron's proposal recall: greedy one-to-one matching of proposals to ground truth.

    ``roidb`` entries hold ground truth (gt_classes > 0) and proposals (gt_classes == 0, sorted by
    score) in ``boxes``; ``limit`` keeps the first proposals. Faster than COCO's recall and slightly
    different from it. Returns {'ar', 'recalls', 'thresholds', 'gt_overlaps', 'num_pos'}.
    ``class_specific``: the recall is computed per ground-truth class and AR is the mean over the
    classes (TEST.CLASS_SPECIFIC_AR); ``recalls`` is then (classes, thresholds). Unlike Detectron,
    which paired the overlaps (in matching order) with classes at other indices, each overlap is
    paired with its own ground-truth box's class.
    """
    if area not in _PROPOSAL_AREA_RANGES:
        raise ValueError('evaluate_box_proposals: unknown area range %r (expected one of %s)'
                         % (area, sorted(_PROPOSAL_AREA_RANGES)))
    area_range = _PROPOSAL_AREA_RANGES[area]
    gt_overlaps = []
    gt_classes = []
    num_pos = 0
    for entry in roidb:
        gt_inds = np.where((entry['gt_classes'] > 0) & (entry['is_crowd'] == 0))[0]
        gt_boxes = entry['boxes'][gt_inds, :]
        gt_areas = entry['seg_areas'][gt_inds]
        valid = np.where((gt_areas >= area_range[0]) & (gt_areas <= area_range[1]))[0]
        gt_boxes = gt_boxes[valid, :]
        num_pos += len(valid)
        boxes = entry['boxes'][entry['gt_classes'] == 0, :]
        if boxes.shape[0] == 0:
            if class_specific:   # uncovered objects still count in their class
                gt_overlaps.append(np.zeros(gt_boxes.shape[0]))
                gt_classes.append(entry['gt_classes'][gt_inds][valid])
            continue
        if limit is not None and boxes.shape[0] > limit:
            boxes = boxes[:limit, :]
        overlaps = box_utils.bbox_overlaps(boxes, gt_boxes)  # (proposals, gt)
        _gt_overlaps = np.zeros(gt_boxes.shape[0])
        by_gt = np.zeros(gt_boxes.shape[0])   # the same values, at their gt box's index
        for j in range(min(boxes.shape[0], gt_boxes.shape[0])):
            # The best covered gt box takes its best proposal; both leave the pool.
            max_overlaps = overlaps.max(axis=0)
            gt_ind = max_overlaps.argmax()
            box_ind = overlaps[:, gt_ind].argmax()
            _gt_overlaps[j] = by_gt[gt_ind] = overlaps[box_ind, gt_ind]
            overlaps[box_ind, :] = -1
            overlaps[:, gt_ind] = -1
        gt_overlaps.append(by_gt if class_specific else _gt_overlaps)
        gt_classes.append(entry['gt_classes'][gt_inds][valid])

    if thresholds is None:
        thresholds = np.arange(0.5, 0.95 + 1e-5, 0.05)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if class_specific:
        overlaps_all = np.concatenate(gt_overlaps) if gt_overlaps else np.zeros(0)
        classes_all = np.concatenate(gt_classes) if gt_classes else np.zeros(0)
        uniq = np.unique(classes_all)
        recalls = np.zeros((len(uniq), len(thresholds)))
        for i, c in enumerate(uniq):
            ov = overlaps_all[classes_all == c]
            recalls[i] = [(ov >= t).sum() / float(len(ov)) for t in thresholds]
        ar = float(recalls.mean(axis=1).mean()) if len(uniq) else 0.0
        return {'ar': ar, 'recalls': recalls, 'thresholds': thresholds,
                'gt_overlaps': np.sort(overlaps_all), 'num_pos': num_pos}
    gt_overlaps = np.sort(np.concatenate(gt_overlaps)) if gt_overlaps else np.zeros(0)
    recalls = np.zeros_like(thresholds)
    for i, t in enumerate(thresholds):
        recalls[i] = (gt_overlaps >= t).sum() / float(max(num_pos, 1))
    return {'ar': float(recalls.mean()), 'recalls': recalls, 'thresholds': thresholds,
            'gt_overlaps': gt_overlaps, 'num_pos': num_pos}
