"""PASCAL VOC average precision of one class (the devkit's definition, as Detectron computes it).

For one class, over a split:
  * positives: the ground-truth objects of the class that are not ``difficult``;
  * detections are taken by decreasing score (ties keep their input order); each goes to the
    ground-truth box of the class in its image that it overlaps most (IoU with +1 widths, boxes
    1-based inclusive as in the XML files). When that IoU is > ``ovthresh`` (0.5, strictly):
    a difficult object makes the detection neither a true nor a false positive; a free object
    makes it a true positive and takes the object; an object already taken makes it a false
    positive (a duplicate). Otherwise it is a false positive;
  * recall = cumulative TP / positives, precision = cumulative TP / cumulative (TP + FP);
  * AP: the VOC2007 11-point metric (the mean over t = 0, 0.1, ..., 1 of the highest precision at
    recall >= t, 0 where none), or from VOC2010 on the area under the precision envelope (the
    highest precision at any recall >= r), summed where the recall changes.
"""
import numpy as np


def voc_ap(rec, prec, use_07_metric=False):
    """AP from the recall and precision arrays (detections in decreasing score order)."""
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        total = 0.0
        # np.arange's thresholds, as the devkit port has them: 0.30000000000000004,
        # 0.6000000000000001 and 0.7000000000000001 exclude a recall of exactly .3, .6 or .7
        for t in np.arange(0.0, 1.1, 0.1):
            above = prec[rec >= t]
            total += above.max() if above.size else 0.0
        return total / 11.0
    # sentinels: recall 0 -> 1, precision 0 at both ends
    r = np.concatenate(([0.0], rec, [1.0]))
    p = np.concatenate(([0.0], prec, [0.0]))
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * envelope[steps + 1]))


def _iou_1based(box, gt):
    """IoU of one box (4,) with boxes gt (G, 4), inclusive pixel corners (+1 widths)."""
    iw = np.maximum(np.minimum(gt[:, 2], box[2]) - np.maximum(gt[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], box[3]) - np.maximum(gt[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inter)
    return inter / union


def voc_eval_class(detections, recs, classname, ovthresh=0.5, use_07_metric=False):
    """``(rec, prec, ap)`` of ``classname``.

    detections: list of ``(image index, score, [x1, y1, x2, y2])`` with 1-based boxes (as in the
        devkit's result files). recs: ``{image index: [{'name', 'difficult', 'bbox'}, ...]}``
        (``voc.parse_voc_xml``'s objects) for every image of the split.
    """
    gt = {}
    npos = 0
    for index, objects in recs.items():
        objs = [o for o in objects if o['name'] == classname]
        boxes = np.array([o['bbox'] for o in objs], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([bool(o['difficult']) for o in objs], dtype=bool)
        gt[index] = (boxes, difficult, np.zeros(len(objs), dtype=bool))
        npos += int((~difficult).sum())
    scores = np.array([d[1] for d in detections], dtype=np.float64)
    order = np.argsort(-scores, kind='stable')
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, d in enumerate(order):
        index, _, box = detections[d]
        if index not in gt:
            raise KeyError('a detection names image %r, which is not in the split' % (index,))
        boxes, difficult, taken = gt[index]
        if boxes.shape[0] == 0:
            fp[k] = 1
            continue
        overlaps = _iou_1based(np.asarray(box, dtype=np.float64), boxes)
        j = int(np.argmax(overlaps))
        if overlaps[j] > ovthresh:
            if difficult[j]:
                continue
            if taken[j]:
                fp[k] = 1
            else:
                tp[k] = 1
                taken[j] = True
        else:
            fp[k] = 1
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    rec = tp / float(npos) if npos > 0 else np.full_like(tp, np.nan)
    # a first detection on a difficult object has tp + fp = 0
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if npos == 0:
        return rec, prec, float('nan')
    return rec, prec, voc_ap(rec, prec, use_07_metric)
