"""Detectron's test-time augmentation (``TEST.BBOX_AUG``, ``TEST.MASK_AUG``, ``TEST.KPS_AUG``):
the network run again on flipped, rescaled and aspect-ratio-stretched copies of the images, and
the results merged with Detectron's heuristics (``core/test.py`` in Detectron).

- boxes: ``im_detect_bbox_aug`` -- the scores and class boxes of every transform, un-transformed
  and combined by ``TEST.BBOX_AUG.SCORE_HEUR`` / ``COORD_HEUR`` (ID, AVG, UNION);
- masks: ``im_detect_mask_aug`` -- soft masks of the detected boxes under every transform,
  un-mirrored and merged by ``TEST.MASK_AUG.HEUR`` (SOFT_AVG, SOFT_MAX, LOGIT_AVG);
- keypoints: ``im_detect_keypoints_aug`` -- heatmaps under every transform (left and right
  keypoints swapped under a flip), merged by ``TEST.KPS_AUG.HEUR``, optionally by box size
  (``combine_heatmaps_size_dep``).

``core.test.im_detect_all`` calls these when the config enables them; the plain path, the network
inputs and the result layouts live in ``core.test``. Shapes as there: N images, R_i RoIs of
image i, C classes, M = MRCNN.RESOLUTION, K keypoints of Hk x Wk heatmaps.
"""
import cv2
import numpy as np
import torch

from pydetectron.core.config import cfg
from pydetectron.core.test import (_heatmaps, _mask_probs, im_conv_body_only, im_detect_bbox)
from pydetectron.utils import boxes as box_utils
from pydetectron.utils import keypoints as keypoint_utils


# ---------------------------------------------------------------------------------------------- #
# Box test-time augmentation
# ---------------------------------------------------------------------------------------------- #

def aspect_ratio_rel(im, aspect_ratio):
    """Resize an image's width by ``aspect_ratio`` (height kept): Detectron's width-relative
    aspect-ratio transform."""
    im_h, im_w = im.shape[:2]
    return cv2.resize(im, dsize=(int(round(aspect_ratio * im_w)), im_h))


def _flip_proposals(box_proposals, ims):
    if cfg.MODEL.FASTER_RCNN:
        return box_proposals
    return [box_utils.flip_boxes(np.asarray(p), im.shape[1]) for p, im in zip(box_proposals, ims)]


def im_detect_bbox_hflip(model, ims, target_scale, target_max_size, box_proposals):
    """Detect on the mirrored images; boxes mapped back to the original images."""
    ims_hf = [np.ascontiguousarray(im[:, ::-1, :]) for im in ims]
    scores, boxes, im_scales, _ = im_detect_bbox(
        model, ims_hf, target_scale, target_max_size, _flip_proposals(box_proposals, ims))
    boxes = [box_utils.flip_boxes(b, im.shape[1]) for b, im in zip(boxes, ims)]
    return scores, boxes, im_scales


def im_detect_bbox_scale(model, ims, target_scale, target_max_size, box_proposals, hflip=False):
    """Detect at another scale (optionally mirrored); boxes in the original images' pixels."""
    if hflip:
        scores, boxes, _ = im_detect_bbox_hflip(model, ims, target_scale, target_max_size,
                                                box_proposals)
    else:
        scores, boxes, _, _ = im_detect_bbox(model, ims, target_scale, target_max_size,
                                             box_proposals)
    return scores, boxes


def im_detect_bbox_aspect_ratio(model, ims, aspect_ratio, box_proposals, hflip=False):
    """Detect on width-stretched images; boxes stretched back to the original images."""
    ims_ar = [aspect_ratio_rel(im, aspect_ratio) for im in ims]
    if not cfg.MODEL.FASTER_RCNN:
        box_proposals = [box_utils.aspect_ratio(np.asarray(p), aspect_ratio)
                         for p in box_proposals]
    if hflip:
        scores, boxes, _ = im_detect_bbox_hflip(model, ims_ar, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                                box_proposals)
    else:
        scores, boxes, _, _ = im_detect_bbox(model, ims_ar, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                             box_proposals)
    boxes = [box_utils.aspect_ratio(b, 1.0 / aspect_ratio) for b in boxes]
    return scores, boxes


def im_detect_bbox_aug(model, ims, box_proposals):
    """Boxes and scores under ``TEST.BBOX_AUG``'s transforms, merged by its heuristics.

    Transforms: horizontal flip, each of ``SCALES`` (with ``MAX_SIZE``; mirrored too with
    ``SCALE_H_FLIP``), each of ``ASPECT_RATIOS`` (mirrored too with ``ASPECT_RATIO_H_FLIP``), and
    the identity, computed last so that its features serve the mask and keypoint heads.
    ``SCORE_HEUR`` / ``COORD_HEUR``: 'ID' keeps the identity's, 'AVG' averages over transforms
    (same RoIs needed: Fast R-CNN), 'UNION' stacks every transform's RoIs (Faster R-CNN, whose
    RoIs differ per transform, needs it). Same return as ``im_detect_bbox``.
    """
    aug = cfg.TEST.BBOX_AUG
    if aug.SCALE_SIZE_DEP:
        raise NotImplementedError('TEST.BBOX_AUG.SCALE_SIZE_DEP: size-dependent scaling of boxes '
                                  'is not implemented (as in Detectron)')
    if (aug.SCORE_HEUR == 'UNION') != (aug.COORD_HEUR == 'UNION'):
        raise ValueError('TEST.BBOX_AUG: SCORE_HEUR and COORD_HEUR must both be UNION or neither '
                         '(got %s / %s)' % (aug.SCORE_HEUR, aug.COORD_HEUR))
    if cfg.MODEL.FASTER_RCNN and aug.SCORE_HEUR != 'UNION':
        raise ValueError('TEST.BBOX_AUG: Faster R-CNN predictions (different RoIs per transform) '
                         'can only be merged with the UNION heuristic, got SCORE_HEUR=%s'
                         % aug.SCORE_HEUR)
    scores_ts, boxes_ts = [], []  # per transform: per-image lists

    if aug.H_FLIP:
        s, b, _ = im_detect_bbox_hflip(model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                       box_proposals)
        scores_ts.append(s)
        boxes_ts.append(b)
    for scale in aug.SCALES:
        s, b = im_detect_bbox_scale(model, ims, scale, aug.MAX_SIZE, box_proposals)
        scores_ts.append(s)
        boxes_ts.append(b)
        if aug.SCALE_H_FLIP:
            s, b = im_detect_bbox_scale(model, ims, scale, aug.MAX_SIZE, box_proposals, hflip=True)
            scores_ts.append(s)
            boxes_ts.append(b)
    for ar in aug.ASPECT_RATIOS:
        s, b = im_detect_bbox_aspect_ratio(model, ims, ar, box_proposals)
        scores_ts.append(s)
        boxes_ts.append(b)
        if aug.ASPECT_RATIO_H_FLIP:
            s, b = im_detect_bbox_aspect_ratio(model, ims, ar, box_proposals, hflip=True)
            scores_ts.append(s)
            boxes_ts.append(b)
    scores_i, boxes_i, im_scales_i, blob_conv_i = im_detect_bbox(
        model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, box_proposals)
    scores_ts.append(scores_i)
    boxes_ts.append(boxes_i)

    def combine(heur, ts, ident, what):
        if heur == 'ID':
            return ident
        per_image = list(zip(*ts))  # per image: the tensors of every transform
        if heur == 'AVG':
            return [torch.stack(t).mean(dim=0) for t in per_image]
        if heur == 'UNION':
            return [torch.cat(t, dim=0) for t in per_image]
        raise NotImplementedError('TEST.BBOX_AUG.%s %r is not supported (ID, AVG, UNION)'
                                  % (what, heur))

    scores_c = combine(aug.SCORE_HEUR, scores_ts, scores_i, 'SCORE_HEUR')
    boxes_c = combine(aug.COORD_HEUR, boxes_ts, boxes_i, 'COORD_HEUR')
    return scores_c, boxes_c, im_scales_i, blob_conv_i


def _hflipped(ims, boxes_list):
    """The mirrored images and their detections' boxes mirrored with them."""
    flipped = [np.ascontiguousarray(im[:, ::-1, :]) for im in ims]
    return flipped, [box_utils.flip_boxes(b, im.shape[1]) for b, im in zip(boxes_list, ims)]


def _masks_at(model, ims, boxes_list, target_scale, target_max_size, hflip=False):
    if hflip:
        ims, boxes_list = _hflipped(ims, boxes_list)
    blob_conv, im_scales = im_conv_body_only(model, ims, target_scale, target_max_size)
    masks = _mask_probs(model, blob_conv, boxes_list, im_scales)
    if hflip:
        masks = [m[:, :, :, ::-1] for m in masks]  # un-mirror the soft masks
    return masks


def _masks_at_aspect_ratio(model, ims, boxes_list, aspect_ratio, hflip=False):
    ims_ar = [aspect_ratio_rel(im, aspect_ratio) for im in ims]
    boxes_ar = [box_utils.aspect_ratio(b, aspect_ratio) for b in boxes_list]
    return _masks_at(model, ims_ar, boxes_ar, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, hflip)


def im_detect_mask_aug(model, ims, boxes_list):
    """Soft masks under ``TEST.MASK_AUG``'s transforms merged by its ``HEUR``: 'SOFT_AVG' (mean
    of probabilities), 'SOFT_MAX' (max) or 'LOGIT_AVG' (sigmoid of the mean logit)."""
    aug = cfg.TEST.MASK_AUG
    if aug.SCALE_SIZE_DEP:
        raise NotImplementedError('TEST.MASK_AUG.SCALE_SIZE_DEP: size-dependent scaling of masks '
                                  'is not implemented (as in Detectron)')
    masks_ts = [_masks_at(model, ims, boxes_list, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)]
    if aug.H_FLIP:
        masks_ts.append(_masks_at(model, ims, boxes_list, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                  hflip=True))
    for scale in aug.SCALES:
        masks_ts.append(_masks_at(model, ims, boxes_list, scale, aug.MAX_SIZE))
        if aug.SCALE_H_FLIP:
            masks_ts.append(_masks_at(model, ims, boxes_list, scale, aug.MAX_SIZE, hflip=True))
    for ar in aug.ASPECT_RATIOS:
        masks_ts.append(_masks_at_aspect_ratio(model, ims, boxes_list, ar))
        if aug.ASPECT_RATIO_H_FLIP:
            masks_ts.append(_masks_at_aspect_ratio(model, ims, boxes_list, ar, hflip=True))

    out = []
    for i in range(len(ims)):
        ts = np.stack([m[i] for m in masks_ts])  # (T, R_i, C, M, M)
        if aug.HEUR == 'SOFT_AVG':
            out.append(ts.mean(axis=0))
        elif aug.HEUR == 'SOFT_MAX':
            out.append(ts.max(axis=0))
        elif aug.HEUR == 'LOGIT_AVG':
            with np.errstate(divide='ignore'):  # a probability of exactly 1 is an infinite logit
                logits = -np.log((1.0 - ts) / np.maximum(ts, 1e-20))
            out.append(1.0 / (1.0 + np.exp(-logits.mean(axis=0))))
        else:
            raise NotImplementedError('TEST.MASK_AUG.HEUR %r is not supported '
                                      '(SOFT_AVG, SOFT_MAX, LOGIT_AVG)' % (aug.HEUR,))
    return out


def _heatmaps_at(model, ims, boxes_list, target_scale, target_max_size, hflip=False,
                 keypoint_names=None):
    if hflip:
        ims, boxes_list = _hflipped(ims, boxes_list)
    blob_conv, im_scales = im_conv_body_only(model, ims, target_scale, target_max_size)
    hms = _heatmaps(model, blob_conv, boxes_list, im_scales)
    if hflip:
        names, flip_map = _keypoint_flip_map(keypoint_names, hms[0].shape[1])
        # mirror, and swap the left/right channels
        hms = [keypoint_utils.flip_heatmaps(h, names, flip_map) for h in hms]
    return hms


def _keypoint_flip_map(keypoint_names, num_keypoints):
    if keypoint_names is None:
        keypoint_names, flip_map = keypoint_utils.get_keypoints()
    else:
        keypoint_names = list(keypoint_names)
        flip_map = keypoint_utils.keypoint_flip_map_from_names(keypoint_names)
    if len(keypoint_names) != num_keypoints:
        raise ValueError('flipped keypoint heatmaps have %d channels but %d keypoint names are '
                         'known; pass the dataset\'s keypoint_names to im_detect_all'
                         % (num_keypoints, len(keypoint_names)))
    return keypoint_names, flip_map


def _heatmaps_at_aspect_ratio(model, ims, boxes_list, aspect_ratio, hflip=False,
                              keypoint_names=None):
    ims_ar = [aspect_ratio_rel(im, aspect_ratio) for im in ims]
    boxes_ar = [box_utils.aspect_ratio(b, aspect_ratio) for b in boxes_list]
    return _heatmaps_at(model, ims_ar, boxes_ar, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, hflip,
                        keypoint_names)


def im_detect_keypoints_aug(model, ims, boxes_list, keypoint_names=None):
    """Heatmaps under ``TEST.KPS_AUG``'s transforms merged by ``HEUR`` ('HM_AVG' mean, 'HM_MAX'
    max); with ``SCALE_SIZE_DEP`` downscaled predictions are left out for objects smaller than
    ``AREA_TH`` and upscaled ones for larger objects."""
    aug = cfg.TEST.KPS_AUG
    hms_ts, ds_ts, us_ts = [], [], []

    def add(hms, ds=False, us=False):
        hms_ts.append(hms)
        ds_ts.append(ds)
        us_ts.append(us)

    names = keypoint_names
    add(_heatmaps_at(model, ims, boxes_list, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE))
    if aug.H_FLIP:
        add(_heatmaps_at(model, ims, boxes_list, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, True, names))
    for scale in aug.SCALES:
        # tagged as down- or upscaling relative to TEST.SCALE, for SCALE_SIZE_DEP
        ds, us = scale < cfg.TEST.SCALE, scale > cfg.TEST.SCALE
        add(_heatmaps_at(model, ims, boxes_list, scale, aug.MAX_SIZE), ds, us)
        if aug.SCALE_H_FLIP:
            add(_heatmaps_at(model, ims, boxes_list, scale, aug.MAX_SIZE, True, names), ds, us)
    for ar in aug.ASPECT_RATIOS:
        add(_heatmaps_at_aspect_ratio(model, ims, boxes_list, ar))
        if aug.ASPECT_RATIO_H_FLIP:
            add(_heatmaps_at_aspect_ratio(model, ims, boxes_list, ar, True, names))

    if aug.HEUR == 'HM_AVG':
        heur_f = np.mean
    elif aug.HEUR == 'HM_MAX':
        heur_f = np.amax
    else:
        raise NotImplementedError('TEST.KPS_AUG.HEUR %r is not supported (HM_AVG, HM_MAX)'
                                  % (aug.HEUR,))
    out = []
    for i in range(len(ims)):
        per_t = [h[i] for h in hms_ts]
        if aug.SCALE_SIZE_DEP:
            out.append(combine_heatmaps_size_dep(per_t, ds_ts, us_ts, boxes_list[i], heur_f))
        else:
            out.append(heur_f(np.stack(per_t), axis=0))
    return out


def combine_heatmaps_size_dep(hms_ts, ds_ts, us_ts, boxes, heur_f):
    """Merge per-transform (R, K, Hk, Wk) heatmaps object by object: small and medium objects
    (area < ``TEST.KPS_AUG.AREA_TH``) ignore downscaled transforms, large ones upscaled ones."""
    if not (len(hms_ts) == len(ds_ts) == len(us_ts)):
        raise ValueError('combine_heatmaps_size_dep: every set of heatmaps needs a downscale and '
                         'an upscale flag')
    areas = box_utils.boxes_area(np.asarray(boxes))
    sm_objs = areas < cfg.TEST.KPS_AUG.AREA_TH
    l_objs = ~sm_objs
    hms_c = np.zeros_like(hms_ts[0])
    for i in range(hms_c.shape[0]):
        to_combine = [hms_t[i] for hms_t, ds_t, us_t in zip(hms_ts, ds_ts, us_ts)
                      if not (sm_objs[i] and ds_t) and not (l_objs[i] and us_t)]
        hms_c[i] = heur_f(np.stack(to_combine), axis=0)
    return hms_c
