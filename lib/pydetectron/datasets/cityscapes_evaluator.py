"""Cityscapes instance-level evaluation (AP, AP50 per class), written from the benchmark's
published definition (cityscapesScripts ``evalInstanceLevelSemanticLabeling``) -- the official
package is not a dependency (it pulls pyquaternion, coloredlogs, requests, ...).

The definition, for the 8 instance classes (``cityscapes.INSTANCE_CLASSES``):
  * ground truth of an image: every value v of its instanceIds image whose label (v if v < 1000,
    else v // 1000) is an instance class; v >= 1000 is an instance, v < 1000 a *group* region
    (e.g. "cars"); pixels whose value is one of the ``VOID_LABEL_IDS`` are void;
  * a prediction is a binary mask (any non-zero pixel), a class and a confidence; empty masks are
    dropped. It is paired with every ground truth region of its class that it intersects;
  * for each overlap threshold t in 0.5, 0.55, ..., 0.95 (``np.arange(0.5, 1, 0.05)``), with a
    minimum region size of 100 pixels, per class, over all images:
      - the ground-truth instances are those (v >= 1000) of >= 100 pixels; each is matched by the
        predictions whose IoU (intersection / (gt + pred - intersection) pixels) is > t: the best
        scored is a true positive at its score, each further one a false positive at the lower of
        the scores; an instance nobody matches is a false negative ("hard" false negative);
      - a prediction that matches no region at IoU > t (any region it touches: groups and small
        instances included) is a false positive at its score, unless its pixels on void, on
        groups and on small instances make up more than t of it (then it is ignored);
      - precision / recall at each distinct score (every example scored >= it counts as
        detected), plus the point (recall 0, precision 1); AP is the sum of precision times the
        step widths (half the distance between the neighbouring recalls, the first recall
        repeated at the start and 0 appended at the end);
      - a class with ground truth but no prediction has AP 0; without ground truth, NaN;
  * a class's AP is the mean over the thresholds, its AP50 the value at t = 0.5; the overall AP
    and AP50 are the means over the classes that are not NaN.
"""
from collections import OrderedDict
import json
import logging
import os

import numpy as np

from pydetectron.datasets import cityscapes

logger = logging.getLogger(__name__)

OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100


def _match_image(gt_ids, predictions, label_ids, void_ids):
    """Ground-truth regions and predictions of one image, paired (the definition's first step).

    Returns ``(gts, preds)``: ``{label: [gt]}`` with gt = {'inst', 'pixels', 'matched': [(pred
    pixels, intersection, score)]} and ``{label: [pred]}`` with pred = {'pixels', 'score',
    'void', 'matched': [(gt inst, gt pixels, intersection)]}.
    """
    values, counts = np.unique(gt_ids, return_counts=True)
    gts = {label: [] for label in label_ids}
    for v, n in zip(values.tolist(), counts.tolist()):
        label = v if v < 1000 else v // 1000
        if label in gts:
            gts[label].append({'inst': v, 'pixels': n, 'matched': []})
    void = np.isin(gt_ids, void_ids)
    preds = {label: [] for label in label_ids}
    for mask, label, score in predictions:
        if label not in preds:
            continue
        mask = np.asarray(mask) != 0
        pixels = int(mask.sum())
        if pixels == 0:
            continue
        pred = {'pixels': pixels, 'score': float(score), 'void': int((void & mask).sum()),
                'matched': []}
        for gt in gts[label]:
            inter = int(((gt_ids == gt['inst']) & mask).sum())
            if inter > 0:
                gt['matched'].append((pixels, inter, float(score)))
                pred['matched'].append((gt['inst'], gt['pixels'], inter))
        preds[label].append(pred)
    return gts, preds


def _average_precision(y_true, y_score, hard_fns):
    """The definition's AP from the scored examples and the number of missed instances."""
    order = np.argsort(y_score, kind='stable')
    scores = y_score[order]
    true_cum = np.cumsum(y_true[order])
    num = len(scores)
    num_true = true_cum[-1]
    _, first = np.unique(scores, return_index=True)
    precision = np.ones(len(first) + 1)
    recall = np.zeros(len(first) + 1)
    for k, i in enumerate(first):
        below = true_cum[i - 1] if i > 0 else 0   # true examples scored below this threshold
        tp = num_true - below
        fp = num - i - tp
        fn = below + hard_fns
        precision[k] = tp / float(tp + fp)
        recall[k] = tp / float(tp + fn)
    padded = np.concatenate(([recall[0]], recall, [0.0]))
    widths = 0.5 * (padded[:-2] - padded[2:])
    return float(np.dot(precision, widths))


def evaluate_matches(images, label_ids, overlaps=OVERLAPS, min_region_size=MIN_REGION_SIZE):
    """``ap[class, overlap]`` from the per-image ``(gts, preds)`` of ``_match_image``."""
    ap = np.zeros((len(label_ids), len(overlaps)))
    for oi, th in enumerate(overlaps):
        for li, label in enumerate(label_ids):
            y_true, y_score = [], []
            hard_fns = 0
            have_gt = have_pred = False
            for gts, preds in images:
                instances = [g for g in gts[label]
                             if g['inst'] >= 1000 and g['pixels'] >= min_region_size]
                have_gt = have_gt or bool(instances)
                have_pred = have_pred or bool(preds[label])
                for gt in instances:
                    scores = [s for p_pixels, inter, s in gt['matched']
                              if inter / float(gt['pixels'] + p_pixels - inter) > th]
                    if not scores:
                        hard_fns += 1
                        continue
                    # the best-scored match is the hit, the others are duplicates
                    ranked = sorted(scores, reverse=True)
                    y_true.append(1)
                    y_score.append(ranked[0])
                    y_true.extend([0] * (len(ranked) - 1))
                    y_score.extend(ranked[1:])
                for pred in preds[label]:
                    if any(inter / float(g_pixels + pred['pixels'] - inter) > th
                           for _, g_pixels, inter in pred['matched']):
                        continue
                    ignored = pred['void'] + sum(
                        inter for inst, g_pixels, inter in pred['matched']
                        if inst < 1000 or g_pixels < min_region_size)
                    if ignored / float(pred['pixels']) <= th:
                        y_true.append(0)
                        y_score.append(pred['score'])
            if have_gt and have_pred:
                ap[li, oi] = _average_precision(np.array(y_true, dtype=np.float64),
                                                np.array(y_score, dtype=np.float64), hard_fns)
            elif have_gt:
                ap[li, oi] = 0.0
            else:
                ap[li, oi] = np.nan
    return ap


def evaluate_instances(gt_id_images, predictions, classes=cityscapes.INSTANCE_CLASSES,
                       void_ids=cityscapes.VOID_LABEL_IDS):
    """The benchmark's numbers for a set of images.

    gt_id_images: instanceIds arrays (H, W) int. predictions: per image a list of ``(binary mask
    (H, W), Cityscapes label id, confidence)``. Returns ``{'AP', 'AP50', 'classes': {name:
    {'AP', 'AP50'}}, 'ap': ap[class, overlap]}``.
    """
    label_ids = [label for _, label in classes]
    images = [_match_image(np.asarray(g), p, label_ids, void_ids)
              for g, p in zip(gt_id_images, predictions)]
    ap = evaluate_matches(images, label_ids)
    o50 = int(np.argmin(np.abs(OVERLAPS - 0.5)))
    per_class = OrderedDict()
    for li, (name, _) in enumerate(classes):
        per_class[name] = {'AP': float(np.mean(ap[li])), 'AP50': float(ap[li, o50])}
    with np.errstate(invalid='ignore'):
        all_ap = [v['AP'] for v in per_class.values() if not np.isnan(v['AP'])]
        all_ap50 = [v['AP50'] for v in per_class.values() if not np.isnan(v['AP50'])]
    return {'AP': float(np.mean(all_ap)) if all_ap else float('nan'),
            'AP50': float(np.mean(all_ap50)) if all_ap50 else float('nan'),
            'classes': per_class, 'ap': ap}


def log_results(res):
    """The benchmark's table: per class AP and AP_50%, then the average."""
    logger.info('#' * 50)
    logger.info('{:<15}:{:>15}{:>15}'.format('what', 'AP', 'AP_50%'))
    logger.info('#' * 50)
    for name, v in res['classes'].items():
        logger.info('{:<15}:{:>15.3f}{:>15.3f}'.format(name, v['AP'], v['AP50']))
    logger.info('-' * 50)
    logger.info('{:<15}:{:>15.3f}{:>15.3f}'.format('average', res['AP'], res['AP50']))


def evaluate_masks(json_dataset, all_boxes, all_segms, output_dir):
    """Score a dataset's masks ([class][image] RLEs with the scores of all_boxes) ->
    ``{dataset: {'mask': {'AP', 'AP50', 'AP/<class>', 'AP50/<class>', ...}}}``."""
    import pycocotools.mask as mask_util
    from pydetectron.datasets import dataset_catalog
    root, split = dataset_catalog.get_cityscapes_info(json_dataset.name)
    label_of = dict(cityscapes.INSTANCE_CLASSES)
    unknown = [c for c in json_dataset.classes[1:] if c not in label_of]
    if unknown:
        raise ValueError('dataset %s: classes %s are not Cityscapes instance classes %s'
                         % (json_dataset.name, unknown, list(label_of)))
    images = json_dataset.COCO.loadImgs(sorted(json_dataset.COCO.getImgIds()))
    gts, preds = [], []
    for i, img in enumerate(images):
        gts.append(cityscapes.read_instance_ids(
            cityscapes.gt_instance_file(root, split, img['file_name'])))
        image_preds = []
        for j in range(1, len(json_dataset.classes)):
            segms, boxes = all_segms[j][i], all_boxes[j][i]
            if len(segms) == 0:
                continue
            masks = mask_util.decode(segms)
            for k in range(boxes.shape[0]):
                image_preds.append((masks[:, :, k], label_of[json_dataset.classes[j]],
                                    float(boxes[k, -1])))
        preds.append(image_preds)
    res = evaluate_instances(gts, preds)
    log_results(res)
    metrics = OrderedDict([('AP', res['AP']), ('AP50', res['AP50'])])
    for name, v in res['classes'].items():
        metrics['AP/' + name] = v['AP']
        metrics['AP50/' + name] = v['AP50']
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'cityscapes_instance_results.json'), 'w') as f:
        json.dump({k: (None if np.isnan(v) else v) for k, v in metrics.items()}, f, indent=1)
    return OrderedDict([(json_dataset.name, OrderedDict([('mask', metrics)]))])
