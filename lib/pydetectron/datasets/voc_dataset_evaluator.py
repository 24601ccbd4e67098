"""PASCAL VOC box evaluation of a dataset's detections (Detectron's ``voc_dataset_evaluator``).

``evaluate_boxes(json_dataset, all_boxes, output_dir)``:
  1. writes the devkit's result files, one per class, ``<output_dir>/comp4_det_<split>_<class>.txt``
     with lines ``<image index> <score %.3f> <x1 y1 x2 y2 %.1f>`` in 1-based pixels (the devkit's
     convention: the roidb's 0-based boxes + 1);
  2. reads the ground truth from the XML files of the VOC folder (difficult flags included) and
     scores each class from its result file (``voc_eval.voc_eval_class``) -- so the numbers are
     those of the files a user can hand to the official MATLAB code;
  3. logs ``AP for <class> = ...``, ``Mean AP = ...`` and the ``Results:`` column as Detectron
     does, and returns ``{dataset name: {'box': {'AP50': mAP, 'AP50/<class>': AP, ...}}}``.

The metric is VOC2007's 11-point AP for VOC2007 (and earlier) folders and the area-based AP of
VOC2010 on otherwise (``dataset_catalog.get_voc_info``). Classes without a non-difficult object in
the split have no AP (NaN, logged) and are left out of the mean (Detectron's mean would be NaN).
"""
from collections import OrderedDict
import logging
import os

import numpy as np

from pydetectron.datasets import dataset_catalog
from pydetectron.datasets import voc
from pydetectron.datasets.voc_eval import voc_eval_class

logger = logging.getLogger(__name__)


def result_file(output_dir, split, classname):
    return os.path.join(output_dir, 'comp4_det_%s_%s.txt' % (split, classname))


def _image_indices(json_dataset, root, split):
    """The split's image indices in roidb order (checked against the split file)."""
    image_index = voc.read_image_set(root, split)
    roidb_index = [os.path.splitext(img['file_name'])[0] for img in
                   json_dataset.COCO.loadImgs(sorted(json_dataset.COCO.getImgIds()))]
    if roidb_index != image_index:
        raise ValueError('dataset %s: its images are not those of %s in that order; the VOC '
                         'evaluator needs the dataset of that split'
                         % (json_dataset.name, voc.image_set_path(root, split)))
    return image_index


def write_voc_results_files(json_dataset, all_boxes, output_dir, image_index, split):
    """One devkit result file per class; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    filenames = []
    for cls_ind, cls in enumerate(json_dataset.classes):
        if cls == '__background__':
            continue
        if len(all_boxes[cls_ind]) != len(image_index):
            raise ValueError('all_boxes[%d] has %d images, the split %d'
                             % (cls_ind, len(all_boxes[cls_ind]), len(image_index)))
        filename = result_file(output_dir, split, cls)
        with open(filename, 'wt') as f:
            for im_ind, index in enumerate(image_index):
                dets = all_boxes[cls_ind][im_ind]
                if isinstance(dets, list) and len(dets) == 0:
                    continue
                for k in range(dets.shape[0]):
                    f.write('{:s} {:.3f} {:.1f} {:.1f} {:.1f} {:.1f}\n'.format(
                        index, dets[k, -1], dets[k, 0] + 1, dets[k, 1] + 1, dets[k, 2] + 1,
                        dets[k, 3] + 1))
        filenames.append(filename)
    return filenames


def read_voc_results_file(filename):
    """``[(image index, score, [x1, y1, x2, y2])]`` from a devkit result file."""
    detections = []
    with open(filename, 'r') as f:
        for line in f:
            parts = line.split()
            if parts:
                detections.append((parts[0], float(parts[1]), [float(v) for v in parts[2:6]]))
    return detections


def evaluate_voc_folder(root, split, classes, result_files, use_07_metric, log=True):
    """``OrderedDict(class -> AP)`` and the mean AP from result files (``{class: path}``)."""
    recs = {index: voc.parse_voc_xml(voc.annotation_path(root, index))['objects']
            for index in voc.read_image_set(root, split)}
    if log:
        logger.info('VOC07 metric? ' + ('Yes' if use_07_metric else 'No'))
    aps = OrderedDict()
    for cls in classes:
        _, _, ap = voc_eval_class(read_voc_results_file(result_files[cls]), recs, cls,
                                  ovthresh=0.5, use_07_metric=use_07_metric)
        aps[cls] = ap
        if log:
            logger.info('AP for {} = {:.4f}'.format(cls, ap))
    scored = [ap for ap in aps.values() if not np.isnan(ap)]
    mean_ap = float(np.mean(scored)) if scored else float('nan')
    if log:
        missing = [c for c, ap in aps.items() if np.isnan(ap)]
        if missing:
            logger.info('No ground truth of %s in the split: left out of the mean',
                        ', '.join(missing))
        logger.info('Mean AP = {:.4f}'.format(mean_ap))
        logger.info('~~~~~~~~')
        logger.info('Results:')
        for ap in aps.values():
            logger.info('{:.3f}'.format(ap))
        logger.info('{:.3f}'.format(mean_ap))
        logger.info('~~~~~~~~')
        logger.info('Computed with pydetectron\'s Python port of the VOC devkit metric; the '
                    'result files beside it can be scored with the official MATLAB code.')
    return aps, mean_ap


def evaluate_boxes(json_dataset, all_boxes, output_dir):
    """Score ``all_boxes`` ([class][image] arrays (n, 5)) -> results dict (module docstring)."""
    info = dataset_catalog.get_voc_info(json_dataset.name)
    if info is None:
        raise ValueError('dataset %s is not a VOC dataset' % json_dataset.name)
    root, split, use_07_metric = info
    voc.check_layout(root, split)
    image_index = _image_indices(json_dataset, root, split)
    write_voc_results_files(json_dataset, all_boxes, output_dir, image_index, split)
    classes = [c for c in json_dataset.classes if c != '__background__']
    aps, mean_ap = evaluate_voc_folder(
        root, split, classes, {c: result_file(output_dir, split, c) for c in classes},
        use_07_metric)
    metrics = OrderedDict([('AP50', mean_ap)])
    for cls, ap in aps.items():
        metrics['AP50/' + cls] = float(ap)
    return OrderedDict([(json_dataset.name, OrderedDict([('box', metrics)]))])
