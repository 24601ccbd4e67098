"""Evaluation interface for the supported tasks: box detection, instance segmentation, keypoint
detection and box proposals.

Results are nested OrderedDicts, as in Detectron::

    <dataset name>:
      <task>:            one of 'box', 'mask', 'keypoint', 'box_proposal'
        <metric>: <val>  'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR@100', 'ARs@1000', ...

A metric that could not be computed (a test split without annotations) is -1.

Which evaluator scores a dataset (Detectron's dispatch): PASCAL VOC datasets (``voc:`` folders
and the catalog's ``voc_*`` entries) get the VOC devkit metric for boxes
(``voc_dataset_evaluator``: ``AP50`` is the mAP, ``AP50/<class>`` the per-class APs; their masks
are not evaluated); Cityscapes datasets get the Cityscapes instance-level metric for masks
(``cityscapes_evaluator``: ``AP``, ``AP50`` and per class) and COCO's for boxes; everything else
COCO's. ``TEST.FORCE_JSON_DATASET_EVAL`` scores every dataset with COCO's.
"""
from collections import OrderedDict
import logging

from pydetectron.datasets import json_dataset_evaluator

logger = logging.getLogger(__name__)

# Indices in COCOeval.stats for boxes and masks ...
COCO_AP = 0
COCO_AP50 = 1
COCO_AP75 = 2
COCO_APS = 3
COCO_APM = 4
COCO_APL = 5
# ... and for keypoints, which have no small-object range.
COCO_KPS_APM = 3
COCO_KPS_APL = 4


def evaluate_all(dataset, all_boxes, all_segms, all_keyps, output_dir, mask_on=None,
                 keypoints_on=None):
    """Evaluate boxes, and masks / keypoints when the model makes them (``cfg.MODEL.MASK_ON`` /
    ``KEYPOINTS_ON`` unless given)."""
    from pydetectron.core.config import cfg
    mask_on = cfg.MODEL.MASK_ON if mask_on is None else mask_on
    keypoints_on = cfg.MODEL.KEYPOINTS_ON if keypoints_on is None else keypoints_on
    all_results = evaluate_boxes(dataset, all_boxes, output_dir)
    logger.info('Evaluating bounding boxes is done!')
    if mask_on and _use_voc_evaluator(dataset):
        logger.warning('%s: VOC has no instance masks; only the boxes are evaluated',
                       dataset.name)
        mask_on = False
    if mask_on:
        results = evaluate_masks(dataset, all_boxes, all_segms, output_dir)
        all_results[dataset.name].update(results[dataset.name])
        logger.info('Evaluating segmentations is done!')
    if keypoints_on:
        results = evaluate_keypoints(dataset, all_boxes, all_keyps, output_dir)
        all_results[dataset.name].update(results[dataset.name])
        logger.info('Evaluating keypoints is done!')
    return all_results


def evaluate_boxes(dataset, all_boxes, output_dir):
    """Evaluate bounding-box detection -> {dataset: {'box': metrics}}."""
    logger.info('Evaluating detections')
    _check_json_dataset(dataset)
    if _use_voc_evaluator(dataset):
        from pydetectron.datasets import voc_dataset_evaluator
        return voc_dataset_evaluator.evaluate_boxes(dataset, all_boxes, output_dir)
    not_comp = not _competition_mode()
    coco_eval = json_dataset_evaluator.evaluate_boxes(
        dataset, all_boxes, output_dir, use_salt=not_comp, cleanup=not_comp)
    return OrderedDict([(dataset.name, _coco_eval_to_results(coco_eval, 'box'))])


def evaluate_masks(dataset, all_boxes, all_segms, output_dir):
    """Evaluate instance segmentation -> {dataset: {'mask': metrics}}."""
    logger.info('Evaluating segmentations')
    _check_json_dataset(dataset)
    if _use_voc_evaluator(dataset):
        raise NotImplementedError('VOC datasets have no instance masks to evaluate: train '
                                  'without MODEL.MASK_ON, or set TEST.FORCE_JSON_DATASET_EVAL')
    if _use_cityscapes_evaluator(dataset):
        from pydetectron.datasets import cityscapes_evaluator
        return cityscapes_evaluator.evaluate_masks(dataset, all_boxes, all_segms, output_dir)
    not_comp = not _competition_mode()
    coco_eval = json_dataset_evaluator.evaluate_masks(
        dataset, all_boxes, all_segms, output_dir, use_salt=not_comp, cleanup=not_comp)
    return OrderedDict([(dataset.name, _coco_eval_to_results(coco_eval, 'mask'))])


def evaluate_keypoints(dataset, all_boxes, all_keyps, output_dir):
    """Evaluate person keypoint detection -> {dataset: {'keypoint': metrics}}."""
    from pydetectron.core.config import cfg
    logger.info('Evaluating keypoints')
    _check_json_dataset(dataset)
    not_comp = not _competition_mode()
    coco_eval = json_dataset_evaluator.evaluate_keypoints(
        dataset, all_boxes, all_keyps, output_dir, use_salt=not_comp, cleanup=not_comp,
        keypoint_confidence=cfg.KRCNN.KEYPOINT_CONFIDENCE)
    return OrderedDict([(dataset.name, _coco_eval_to_results(coco_eval, 'keypoint'))])


def evaluate_box_proposals(dataset, roidb):
    """Proposal average recall at 100 and 1000 proposals, overall and per object size (averaged
    per class first with TEST.CLASS_SPECIFIC_AR)."""
    from pydetectron.core.config import cfg
    res = _empty_results('box_proposal')
    suffixes = OrderedDict([('all', ''), ('small', 's'), ('medium', 'm'), ('large', 'l')])
    for limit in (100, 1000):
        for area, suffix in suffixes.items():
            stats = json_dataset_evaluator.evaluate_box_proposals(
                dataset, roidb, area=area, limit=limit,
                class_specific=cfg.TEST.CLASS_SPECIFIC_AR)
            res['box_proposal']['AR{}@{:d}'.format(suffix, limit)] = stats['ar']
    return OrderedDict([(dataset.name, res)])


def log_box_proposal_results(results):
    """Log proposal recall results, one metric a line."""
    for dataset in results.keys():
        keys = results[dataset]['box_proposal'].keys()
        pad = max(len(k) for k in keys)
        logger.info(dataset)
        for k, v in results[dataset]['box_proposal'].items():
            logger.info('{}: {:.3f}'.format(k.ljust(pad), v))


def copy_paste_friendly_lines(results):
    """Detectron's spreadsheet-friendly summary lines, each starting with 'copypaste: '."""
    lines = []
    for dataset in results.keys():
        lines.append('copypaste: Dataset: {}'.format(dataset))
        for task, metrics in results[dataset].items():
            lines.append('copypaste: Task: {}'.format(task))
            lines.append('copypaste: ' + ','.join(metrics.keys()))
            lines.append('copypaste: ' + ','.join('{:.4f}'.format(v) for v in metrics.values()))
    return lines


def log_copy_paste_friendly_results(results):
    """Log the results so that they paste into a spreadsheet (grep for 'copypaste')."""
    for line in copy_paste_friendly_lines(results):
        logger.info(line)


def check_expected_results(results, atol=0.005, rtol=0.1):
    """Compare results with ``cfg.EXPECTED_RESULTS`` ([[dataset, task, metric, value], ...]).

    Logs PASS / FAIL per expectation and returns True when all pass (True when there are none).
    """
    from pydetectron.core.config import cfg
    ok = True
    for dataset, task, metric, expected_val in cfg.EXPECTED_RESULTS:
        if dataset not in results or task not in results[dataset] \
                or metric not in results[dataset][task]:
            raise KeyError('EXPECTED_RESULTS names {} > {} > {}, which is not in the results'
                           .format(dataset, task, metric))
        actual_val = results[dataset][task][metric]
        if isinstance(expected_val, (list, tuple)):
            # [mean, std]: within mean +/- EXPECTED_RESULTS_SIGMA_TOL * std (Detectron)
            if len(expected_val) != 2:
                raise ValueError('EXPECTED_RESULTS: {} > {} > {} expects a value or [mean, std], '
                                 'got {!r}'.format(dataset, task, metric, expected_val))
            mean, std = expected_val
            lo = mean - cfg.EXPECTED_RESULTS_SIGMA_TOL * std
            hi = mean + cfg.EXPECTED_RESULTS_SIGMA_TOL * std
            failed = not lo < actual_val < hi
            msg = ('{} > {} > {} sanity check (actual vs. expected): {:.3f} vs. mean={:.4f}, '
                   'std={:.4}, range=({:.4f}, {:.4f})').format(
                       dataset, task, metric, actual_val, mean, std, lo, hi)
        else:
            err = abs(actual_val - expected_val)
            tol = atol + rtol * abs(expected_val)
            failed = err > tol
            msg = ('{} > {} > {} sanity check (actual vs. expected): {:.3f} vs. {:.3f}, '
                   'err={:.3f}, tol={:.3f}').format(dataset, task, metric, actual_val,
                                                   expected_val, err, tol)
        if failed:
            ok = False
            logger.error('FAIL: ' + msg)
        else:
            logger.info('PASS: ' + msg)
    return ok


def _competition_mode():
    from pydetectron.core.config import cfg
    return bool(cfg.TEST.COMPETITION_MODE)


def _force_json_eval():
    from pydetectron.core.config import cfg
    return bool(cfg.TEST.FORCE_JSON_DATASET_EVAL)


def _use_voc_evaluator(dataset):
    from pydetectron.datasets import dataset_catalog
    return not _force_json_eval() and dataset_catalog.get_voc_info(dataset.name) is not None


def _use_cityscapes_evaluator(dataset):
    from pydetectron.datasets import dataset_catalog
    return (not _force_json_eval()
            and dataset_catalog.get_cityscapes_info(dataset.name) is not None)


def _check_json_dataset(dataset):
    if not hasattr(dataset, 'COCO'):
        raise NotImplementedError(
            'No evaluator for dataset {}: only COCO-format (JSON) datasets are supported'
            .format(getattr(dataset, 'name', dataset)))


def _coco_eval_to_results(coco_eval, task):
    res = _empty_results(task)
    if coco_eval is None:
        return res
    s = coco_eval.stats
    metrics = res[task]
    metrics['AP'] = float(s[COCO_AP])
    metrics['AP50'] = float(s[COCO_AP50])
    metrics['AP75'] = float(s[COCO_AP75])
    if task == 'keypoint':
        metrics['APm'] = float(s[COCO_KPS_APM])
        metrics['APl'] = float(s[COCO_KPS_APL])
    else:
        metrics['APs'] = float(s[COCO_APS])
        metrics['APm'] = float(s[COCO_APM])
        metrics['APl'] = float(s[COCO_APL])
    return res


_METRICS = {
    'box': ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'),
    'mask': ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'),
    'keypoint': ('AP', 'AP50', 'AP75', 'APm', 'APl'),
    'box_proposal': ('AR@100', 'ARs@100', 'ARm@100', 'ARl@100',
                     'AR@1000', 'ARs@1000', 'ARm@1000', 'ARl@1000'),
}


def _empty_results(task):
    return OrderedDict([(task, OrderedDict((m, -1) for m in _METRICS[task]))])
