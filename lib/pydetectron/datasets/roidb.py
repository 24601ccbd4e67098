"""The training roidb: datasets joined, flipped copies, filtering, box targets, aspect ranking.

``combined_roidb_for_training(dataset_names, proposal_files)`` returns
``(roidb, ratio_list, ratio_index)``:

    roidb        list of roidb entries (see ``json_dataset``), the flipped copies after the
                 originals of each dataset (TRAIN.USE_FLIPPED), unusable entries removed, each
                 with ``bbox_targets`` (R, 5) float32 = (class, dx, dy, dw, dh) and
                 ``need_crop`` (TRAIN.ASPECT_CROPPING)
    ratio_list   (N,) float64 aspect ratios width / height in increasing order, clamped to
                 [TRAIN.ASPECT_LO, TRAIN.ASPECT_HI] when aspect cropping is on
    ratio_index  (N,) int64 roidb index of each ratio_list element

The loader (``pydetectron.roi_data.loader``) groups minibatches by these ratios.
"""
import logging
import os

import numpy as np

from pydetectron.core.config import cfg
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.utils import boxes as box_utils
from pydetectron.utils import keypoints as keypoint_utils
from pydetectron.utils import segms as segm_utils

logger = logging.getLogger(__name__)


def combined_roidb_for_training(dataset_names, proposal_files=()):
    """Load and join the roidbs of ``dataset_names`` (a name or a sequence), with one proposal
    file per dataset or none, and prepare them for training (see the module docstring)."""
    if isinstance(dataset_names, str):
        dataset_names = (dataset_names,)
    if isinstance(proposal_files, str):
        proposal_files = (proposal_files,)
    if proposal_files is None or len(proposal_files) == 0:
        proposal_files = (None,) * len(dataset_names)
    if len(dataset_names) != len(proposal_files):
        raise ValueError('combined_roidb_for_training: %d datasets but %d proposal files '
                         '(TRAIN.DATASETS and TRAIN.PROPOSAL_FILES must pair up)'
                         % (len(dataset_names), len(proposal_files)))
    roidb = []
    for name, proposal_file in zip(dataset_names, proposal_files):
        roidb.extend(_get_training_roidb(name, proposal_file))
    roidb = filter_for_training(roidb)

    logger.info('Computing image aspect ratios and ordering the ratios...')
    ratio_list, ratio_index = rank_for_training(roidb)

    logger.info('Computing bounding-box regression targets...')
    add_bbox_regression_targets(roidb)
    _compute_and_log_stats(roidb)
    return roidb, ratio_list, ratio_index


def _get_training_roidb(dataset_name, proposal_file):
    ds = JsonDataset(dataset_name)
    roidb = ds.get_roidb(gt=True, proposal_file=proposal_file,
                         crowd_filter_thresh=cfg.TRAIN.CROWD_FILTER_THRESH)
    if cfg.TRAIN.USE_FLIPPED:
        logger.info('Appending horizontally-flipped training examples...')
        extend_with_flipped_entries(roidb, ds)
    logger.info('Loaded dataset: %s (%d entries)', ds.name, len(roidb))
    return roidb


def flip_entry(entry, dataset):
    """A horizontally flipped copy of an roidb entry: boxes, segms and keypoints mirrored
    (keypoints also trade left/right names); arrays that do not change are shared."""
    width = entry['width']
    boxes = box_utils.flip_boxes(entry['boxes'], width)
    if not (boxes[:, 2] >= boxes[:, 0]).all():
        raise ValueError('image %s (%s): a box reaches beyond the image width %d; cannot flip'
                         % (entry['id'], entry['image'], width))
    flipped = {k: v for k, v in entry.items()
               if k not in ('boxes', 'segms', 'gt_keypoints', 'flipped')}
    flipped['boxes'] = boxes
    flipped['segms'] = segm_utils.flip_segms(entry['segms'], entry['height'], width)
    if dataset.keypoints is not None:
        flipped['gt_keypoints'] = keypoint_utils.flip_keypoints(
            dataset.keypoints, dataset.keypoint_flip_map, entry['gt_keypoints'], width)
    flipped['flipped'] = not entry['flipped']
    return flipped


def extend_with_flipped_entries(roidb, dataset):
    """Append a flipped copy of every entry to ``roidb`` (in place)."""
    roidb.extend([flip_entry(entry, dataset) for entry in roidb])


def filter_for_training(roidb):
    """Entries usable for training: with at least one foreground or background RoI (crowd rows
    are neither), with visible keypoints when MODEL.KEYPOINTS_ON, and whose image file exists
    (missing files are skipped with a warning)."""
    def is_valid(entry):
        overlaps = entry['max_overlaps']
        fg_inds = np.where(overlaps >= cfg.TRAIN.FG_THRESH)[0]
        bg_inds = np.where((overlaps < cfg.TRAIN.BG_THRESH_HI) &
                           (overlaps >= cfg.TRAIN.BG_THRESH_LO))[0]
        valid = len(fg_inds) > 0 or len(bg_inds) > 0
        if cfg.MODEL.KEYPOINTS_ON:
            valid = valid and entry['has_visible_keypoints']
        return valid

    num = len(roidb)
    exists = {}
    missing = []
    filtered = []
    for entry in roidb:
        path = entry['image']
        if path not in exists:
            exists[path] = os.path.exists(path)
            if not exists[path]:
                missing.append(path)
        if exists[path] and is_valid(entry):
            filtered.append(entry)
    if missing:
        logger.warning('Skipping %d roidb images whose file is missing: %s%s', len(missing),
                       ', '.join(missing[:5]), ' ...' if len(missing) > 5 else '')
    logger.info('Filtered %d roidb entries: %d -> %d', num - len(filtered), num, len(filtered))
    return filtered


def rank_for_training(roidb):
    """Aspect ratios (width / height) sorted increasingly, and the roidb index of each.

    With TRAIN.ASPECT_CROPPING, entries whose ratio lies outside [TRAIN.ASPECT_LO,
    TRAIN.ASPECT_HI] get ``need_crop = True`` and their ratio clamped to the bound: the loader
    crops them to that ratio. Otherwise ``need_crop`` is False everywhere.
    """
    ratio_hi, ratio_lo = cfg.TRAIN.ASPECT_HI, cfg.TRAIN.ASPECT_LO
    cropping = cfg.TRAIN.ASPECT_CROPPING
    if cropping and not ratio_lo <= 1. <= ratio_hi:
        raise ValueError('TRAIN.ASPECT_LO (%g) <= 1 <= TRAIN.ASPECT_HI (%g) is required'
                         % (ratio_lo, ratio_hi))
    ratios = np.empty((len(roidb),), dtype=np.float64)
    need_crop_cnt = 0
    for i, entry in enumerate(roidb):
        ratio = entry['width'] / float(entry['height'])
        entry['need_crop'] = False
        if cropping and (ratio > ratio_hi or ratio < ratio_lo):
            entry['need_crop'] = True
            ratio = min(max(ratio, ratio_lo), ratio_hi)
            need_crop_cnt += 1
        ratios[i] = ratio
    if cropping:
        logger.info('Number of entries that need to be cropped: %d. Ratio bound: [%.2f, %.2f]',
                    need_crop_cnt, ratio_lo, ratio_hi)
    ratio_index = np.argsort(ratios, kind='stable')
    return ratios[ratio_index], ratio_index


def add_bbox_regression_targets(roidb):
    """``bbox_targets`` (R, 5) of every entry (Fast R-CNN on precomputed proposals)."""
    for entry in roidb:
        entry['bbox_targets'] = _compute_targets(entry)


def _compute_targets(entry):
    """(class, dx, dy, dw, dh) of each row whose max overlap reaches TRAIN.BBOX_THRESH, relative to
    the non-crowd ground-truth box it overlaps most (MODEL.BBOX_REG_WEIGHTS); class 1 for all
    with MODEL.CLS_AGNOSTIC_BBOX_REG; zeros elsewhere."""
    rois = entry['boxes']
    overlaps = entry['max_overlaps']
    labels = entry['max_classes']
    gt_inds = np.where((entry['gt_classes'] > 0) & ~entry['is_crowd'])[0]
    targets = np.zeros((rois.shape[0], 5), dtype=np.float32)
    if len(gt_inds) == 0:
        return targets
    ex_inds = np.where(overlaps >= cfg.TRAIN.BBOX_THRESH)[0]
    ex_gt_overlaps = box_utils.bbox_overlaps(rois[ex_inds, :], rois[gt_inds, :])
    gt_assignment = ex_gt_overlaps.argmax(axis=1)
    gt_rois = rois[gt_inds[gt_assignment], :]
    ex_rois = rois[ex_inds, :]
    targets[ex_inds, 0] = 1 if cfg.MODEL.CLS_AGNOSTIC_BBOX_REG else labels[ex_inds]
    targets[ex_inds, 1:] = box_utils.bbox_transform_inv(ex_rois, gt_rois,
                                                        cfg.MODEL.BBOX_REG_WEIGHTS)
    return targets


def _compute_and_log_stats(roidb):
    if not roidb:
        logger.warning('The training roidb is empty')
        return
    classes = roidb[0]['dataset'].classes
    char_len = max(len(c) for c in classes)
    hist = np.zeros((len(classes),), dtype=np.int64)
    for entry in roidb:
        gt_classes = entry['gt_classes'][(entry['gt_classes'] > 0) & ~entry['is_crowd']]
        hist += np.bincount(gt_classes, minlength=len(classes))[:len(classes)]
    logger.debug('Ground-truth class histogram:')
    for i, v in enumerate(hist):
        logger.debug('%d%s: %d', i, classes[i].rjust(char_len), v)
    logger.debug('%s: %d', 'total'.rjust(char_len), hist.sum())
