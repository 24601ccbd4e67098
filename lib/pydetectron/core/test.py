"""Inference for Detectron's R-CNN models: from BGR images to Detectron's result layout.

``im_detect_all(model, im)`` returns, for one image:
  cls_boxes[j]  (n_j, 5) float32 array of x1, y1, x2, y2, score of class j (j = 0, background, is
                an empty list), in the original image's pixels
  cls_segms[j]  list of n_j COCO RLEs (the masks pasted into the full image), or None
  cls_keyps[j]  list of n_j (4, K) float32 arrays of x, y, logit, prob, or None
and, given a list of images, the list of those triples: the images then go through the network
together, ``cfg.TEST.IMS_PER_BATCH`` per forward pass when the caller batches them.

Everything follows Detectron's test path: the image scale rule (``TEST.SCALE``, ``TEST.MAX_SIZE``),
box decoding with ``MODEL.BBOX_REG_WEIGHTS`` in the original image, class-wise NMS with
``TEST.SCORE_THRESH`` and ``TEST.DETECTIONS_PER_IM``, soft-NMS, box voting, test-time
augmentation of boxes, masks and keypoints with Detectron's merge heuristics, mask pasting
(``segm_results``) and keypoint decoding (``keypoint_results``). The network runs on the model's
device; the plain box path stays there (the model's ``postprocess`` helpers); numpy takes over
where Detectron's heuristics are defined on arrays (soft-NMS, voting, mask pasting, keypoints).

Shapes: N images in a batch; R RoIs over the batch, R_i of image i; C = MODEL.NUM_CLASSES;
M = MRCNN.RESOLUTION; K keypoints of Hk x Wk heatmaps.
"""
from collections import defaultdict
import logging

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from pydetectron.core import mask_results
from pydetectron.core.config import cfg
from pydetectron.modeling import postprocess
from pydetectron.utils import blob as blob_utils
from pydetectron.utils import boxes as box_utils
from pydetectron.utils import keypoints as keypoint_utils
from pydetectron.utils.timer import Timer

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- #
# The whole test path
# ---------------------------------------------------------------------------------------------- #

def im_detect_all(model, im, box_proposals=None, timers=None, keypoint_names=None):
    """Detect boxes, masks and keypoints in one BGR image (H, W, 3) uint8, or in a list of them.

    ``box_proposals``: (R, 4) proposals in the image's pixels for Fast R-CNN models
    (``MODEL.FASTER_RCNN`` False); a list of them for a list of images; None with an RPN.
    ``keypoint_names``: the dataset's keypoint names, needed by flip test-time augmentation of
    keypoints (left and right swap); COCO's by default.
    Returns ``(cls_boxes, cls_segms, cls_keyps)``, or a list of such triples for a list.
    """
    if isinstance(im, (list, tuple)):
        return im_detect_all_batch(model, list(im), box_proposals, timers, keypoint_names)
    proposals = None if box_proposals is None else [box_proposals]
    return im_detect_all_batch(model, [im], proposals, timers, keypoint_names)[0]


def im_detect_all_batch(model, ims, box_proposals=None, timers=None, keypoint_names=None):
    """``im_detect_all`` over a list of images sharing the network's forward passes.

    The results equal image-by-image results when the images share one blob size, to float
    precision (a batched kernel may sum in another order). With different sizes the smaller
    images are zero-padded in the blob, which also changes their features a few pixels from
    their bottom/right border (a deeper convolution sees the padded activations, not zeros);
    batch images of one size, or one aspect ratio, where that matters.
    """
    if timers is None:
        timers = defaultdict(Timer)
    if len(ims) == 0:
        return []
    for i, im in enumerate(ims):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError('im_detect_all: image %d must be an (H, W, 3) BGR array, got %s'
                             % (i, getattr(im, 'shape', type(im).__name__)))
    if cfg.RETINANET.RETINANET_ON:  # boxes only (core.test_retinanet)
        from pydetectron.core import test_retinanet
        timers['im_detect_bbox'].tic()
        cls_boxes = test_retinanet.im_detect_bbox(model, ims)
        timers['im_detect_bbox'].toc()
        return [(b, None, None) for b in cls_boxes]
    if box_proposals is None:
        box_proposals = [None] * len(ims)
    if not cfg.MODEL.FASTER_RCNN and any(p is None for p in box_proposals):
        raise ValueError('im_detect_all: MODEL.FASTER_RCNN is False (Fast R-CNN), so every image '
                         'needs box_proposals (R, 4)')

    timers['im_detect_bbox'].tic()
    if cfg.TEST.BBOX_AUG.ENABLED:
        scores, boxes, im_scales, blob_conv = im_detect_bbox_aug(model, ims, box_proposals)
    else:
        scores, boxes, im_scales, blob_conv = im_detect_bbox(
            model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, box_proposals)
    timers['im_detect_bbox'].toc()

    # Class-wise NMS and the per-image limit. The boxes of each image come back flattened in
    # class order (class 1 first), the order in which masks and keypoints are matched to them.
    timers['misc_bbox'].tic()
    results = box_results_for_images(scores, boxes)
    timers['misc_bbox'].toc()
    cls_boxes = [r[2] for r in results]
    det_boxes = [r[1] for r in results]  # (n_i, 4) each

    cls_segms = [None] * len(ims)
    if cfg.MODEL.MASK_ON and any(b.shape[0] > 0 for b in det_boxes):
        timers['im_detect_mask'].tic()
        if cfg.TEST.MASK_AUG.ENABLED:
            masks = im_detect_mask_aug(model, ims, det_boxes)
        else:
            masks = im_detect_mask(model, im_scales, det_boxes, blob_conv)
        timers['im_detect_mask'].toc()
        timers['misc_mask'].tic()
        for i, im in enumerate(ims):
            if det_boxes[i].shape[0] > 0:
                cls_segms[i] = _segms_of_image(cls_boxes[i], masks[i], det_boxes[i], im.shape[:2],
                                               model_device(model))
        timers['misc_mask'].toc()

    cls_keyps = [None] * len(ims)
    if cfg.MODEL.KEYPOINTS_ON and any(b.shape[0] > 0 for b in det_boxes):
        timers['im_detect_keypoints'].tic()
        if cfg.TEST.KPS_AUG.ENABLED:
            heatmaps = im_detect_keypoints_aug(model, ims, det_boxes, keypoint_names)
        else:
            heatmaps = im_detect_keypoints(model, im_scales, det_boxes, blob_conv)
        timers['im_detect_keypoints'].toc()
        timers['misc_keypoints'].tic()
        for i in range(len(ims)):
            if det_boxes[i].shape[0] > 0:
                cls_keyps[i] = keypoint_results(cls_boxes[i], heatmaps[i], det_boxes[i])
        timers['misc_keypoints'].toc()

    return [(cls_boxes[i], cls_segms[i], cls_keyps[i]) for i in range(len(ims))]


# ---------------------------------------------------------------------------------------------- #
# Network inputs and forward passes
# ---------------------------------------------------------------------------------------------- #

def model_device(model):
    """The device of the model's parameters (CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device('cpu')


def get_image_blob(ims, target_scale, target_max_size):
    """BGR images -> (data (N, 3, H, W) float32, im_info (N, 3) float32, im_scales list).

    Each image's im_info holds the size of the blob it would get alone (its scaled size padded to
    ``FPN.COARSEST_STRIDE`` with FPN), Detectron's test-time convention, so batching does not
    change how proposals are clipped.
    """
    stride = int(cfg.FPN.COARSEST_STRIDE) if cfg.FPN.FPN_ON else 1
    processed, im_scales, im_info = [], [], []
    for im in ims:
        im_p, im_scale = blob_utils.prep_im_for_blob(im, cfg.PIXEL_MEANS, target_scale,
                                                     target_max_size)
        processed.append(im_p)
        im_scales.append(im_scale)
        h, w = blob_utils.padded_size(im_p.shape[0], im_p.shape[1], stride)
        im_info.append((h, w, im_scale))
    data = blob_utils.im_list_to_blob(processed, stride=stride)
    return data, np.array(im_info, dtype=np.float32), im_scales


def _rois_blob(boxes_list, im_scales, device):
    """Per-image (R_i, 4) boxes in image pixels -> (R, 5) float32 rois (batch index,
    box * im_scale), the product taken in float64 as Detectron's numpy did."""
    rois = []
    for i, (b, s) in enumerate(zip(boxes_list, im_scales)):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4) * float(s)
        rois.append(np.hstack((np.full((b.shape[0], 1), float(i)), b)))
    return torch.from_numpy(np.vstack(rois).astype(np.float32)).to(device)


def _forward(model, ims, target_scale, target_max_size, rois=None):
    """One forward pass over the images -> (the model's output dict, im_info (N, 3), im_scales)."""
    data, im_info, im_scales = get_image_blob(ims, target_scale, target_max_size)
    device = model_device(model)
    data = torch.from_numpy(data).to(device)
    im_info = torch.from_numpy(im_info).to(device)
    with torch.no_grad():
        if rois is None:
            out = model(data, im_info)
        else:
            out = model(data, im_info, rois=_rois_blob(rois, im_scales, device))
    return out, im_info, im_scales


def im_conv_body_only(model, ims, target_scale, target_max_size):
    """The body's features of the images at one scale -> (blob_conv, im_scales)."""
    data, im_info, im_scales = get_image_blob(ims, target_scale, target_max_size)
    device = model_device(model)
    data = torch.from_numpy(data).to(device)
    with torch.no_grad():
        if hasattr(model, 'conv_body_only'):
            blob_conv = model.conv_body_only(data)
        else:
            blob_conv = model(data, torch.from_numpy(im_info).to(device))['blob_conv']
    return blob_conv, im_scales


def _split_by_image(rois, num_images):
    """Indices of the rows of (R, 5) rois that belong to each image (rois are image by image)."""
    batch_inds = rois[:, 0].round().long()
    return [torch.nonzero(batch_inds == i).squeeze(1) for i in range(num_images)]


def im_detect_bbox(model, ims, target_scale, target_max_size, box_proposals=None):
    """Boxes and class scores of every RoI of every image, in the original image's pixels.

    Returns (scores, boxes, im_scales, blob_conv): per-image lists of (R_i, C) probabilities and
    (R_i, 4C) class-specific boxes (tensors on the model's device), the blob scales and the
    body's output (for the mask and keypoint heads).
    """
    dedup = cfg.DEDUP_BOXES > 0 and not cfg.MODEL.FASTER_RCNN
    inv_indices = [None] * len(ims)
    if not cfg.MODEL.FASTER_RCNN:
        box_proposals = [np.asarray(p, dtype=np.float32).reshape(-1, 4) for p in box_proposals]
        if dedup:
            # Distinct proposals can map onto the same feature-map RoI: compute each once.
            box_proposals = list(box_proposals)
            for i, (im, p) in enumerate(zip(ims, box_proposals)):
                im_scale = blob_utils.get_im_scale(im.shape[0], im.shape[1], target_scale,
                                                   target_max_size)
                # Detectron hashes the (R, 5) rois blob rows: (pyramid level 0, scaled box)
                rois_blob = np.hstack((np.zeros((p.shape[0], 1)), p * im_scale))
                v = np.array([1, 1e3, 1e6, 1e9, 1e12])
                hashes = np.round(rois_blob * cfg.DEDUP_BOXES).dot(v)
                _, index, inv_index = np.unique(hashes, return_index=True, return_inverse=True)
                box_proposals[i] = p[index, :]
                inv_indices[i] = torch.as_tensor(inv_index.reshape(-1))
        out, im_info, im_scales = _forward(model, ims, target_scale, target_max_size,
                                           rois=box_proposals)
    else:
        out, im_info, im_scales = _forward(model, ims, target_scale, target_max_size)

    rois, cls_prob = out['rois'], out['cls_score']
    # Decoded in the original image's pixels (rois / im_scale) and clipped to it, as Detectron.
    pred_boxes_all = postprocess.decode_boxes(
        rois, out['bbox_pred'], cls_prob.shape[1], im_info, [im.shape[:2] for im in ims],
        bbox_reg=cfg.TEST.BBOX_REG, weights=tuple(cfg.MODEL.BBOX_REG_WEIGHTS),
        clip=cfg.BBOX_XFORM_CLIP, cls_agnostic_bbox_reg=cfg.MODEL.CLS_AGNOSTIC_BBOX_REG)
    scores_list, boxes_list = [], []
    for i, inds in enumerate(_split_by_image(rois, len(ims))):
        scores = cls_prob[inds]
        pred_boxes = pred_boxes_all[inds]
        if inv_indices[i] is not None:
            inv = inv_indices[i].to(scores.device)
            scores, pred_boxes = scores[inv], pred_boxes[inv]
        scores_list.append(scores)
        boxes_list.append(pred_boxes)
    return scores_list, boxes_list, im_scales, out.get('blob_conv')


def im_proposals(model, ims):
    """RPN proposals of an RPN-only model -> per-image ((R_i, 4) boxes in image pixels, (R_i,)
    scores), numpy, best first."""
    out, _, im_scales = _forward(model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    rois, probs = out['rois'], out['rpn_roi_probs'].reshape(-1)
    results = []
    for i, inds in enumerate(_split_by_image(rois, len(ims))):
        boxes = (rois[inds, 1:5] / im_scales[i]).cpu().numpy()
        scores = probs[inds].cpu().numpy()
        order = np.argsort(-scores, kind='stable')
        results.append((boxes[order], scores[order]))
    return results


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


# ---------------------------------------------------------------------------------------------- #
# Class-wise NMS, soft-NMS, box voting and the per-image limit
# ---------------------------------------------------------------------------------------------- #

def box_results_for_images(scores_list, boxes_list):
    """Per image: (scores (n,), boxes (n, 4), cls_boxes) after thresholding, NMS and the limit.

    Plain NMS runs batched on the model's device; soft-NMS and box voting, defined on arrays by
    Detectron, run in numpy image by image.
    """
    if cfg.TEST.SOFT_NMS.ENABLED or cfg.TEST.BBOX_VOTE.ENABLED:
        return [box_results_with_nms_and_limit(s.cpu().numpy(), b.cpu().numpy())
                for s, b in zip(scores_list, boxes_list)]
    return _box_results_on_device(scores_list, boxes_list)


def _box_results_on_device(scores_list, boxes_list):
    """The plain path, all images in one call of the model's batched ``postprocess``; the same
    detections as ``box_results_with_nms_and_limit``, class by class, each class in RoI order."""
    num_classes = cfg.MODEL.NUM_CLASSES
    im_inds = torch.cat([torch.full((s.shape[0],), i, dtype=torch.int64, device=s.device)
                         for i, s in enumerate(scores_list)])
    dets = postprocess.box_results_with_nms_and_limit(
        torch.cat(scores_list), torch.cat(boxes_list), im_inds, len(scores_list),
        score_thresh=cfg.TEST.SCORE_THRESH, nms_thresh=cfg.TEST.NMS,
        detections_per_im=cfg.TEST.DETECTIONS_PER_IM)
    results = []
    for d in dets:
        boxes = d['boxes'].cpu().numpy().astype(np.float32, copy=False)
        scores = d['scores'].cpu().numpy().astype(np.float32, copy=False)
        classes = d['classes'].cpu().numpy()
        cls_boxes = [[] for _ in range(num_classes)]
        for j in range(1, num_classes):
            sel = classes == j
            cls_boxes[j] = np.hstack((boxes[sel], scores[sel, None])).astype(np.float32)
        results.append((scores, boxes, cls_boxes))
    return results


def box_results_with_nms_and_limit(scores, boxes):
    """Detectron's numpy post-processing of one image's (R, C) scores and (R, 4C) boxes.

    For each class j >= 1: keep scores > ``TEST.SCORE_THRESH``, then NMS (``TEST.NMS``) or soft-NMS
    (``TEST.SOFT_NMS``), then optional box voting (``TEST.BBOX_VOTE``) with the thresholded boxes
    of that class; finally keep the ``TEST.DETECTIONS_PER_IM`` best over all classes (every
    detection scoring at least the limit's score). Returns (scores (n,), boxes (n, 4), cls_boxes)
    with the flat arrays in class order. Rows of a class come in Detectron's order: RoI order
    after NMS (and box voting, which keeps the rows of its input), Soft-NMS's selection order
    after Soft-NMS.
    """
    num_classes = cfg.MODEL.NUM_CLASSES
    cls_boxes = [[] for _ in range(num_classes)]
    for j in range(1, num_classes):
        inds = np.where(scores[:, j] > cfg.TEST.SCORE_THRESH)[0]
        dets_j = np.hstack((boxes[inds, j * 4:(j + 1) * 4],
                            scores[inds, j][:, None])).astype(np.float32, copy=False)
        if cfg.TEST.SOFT_NMS.ENABLED:
            nms_dets = soft_nms(dets_j, sigma=cfg.TEST.SOFT_NMS.SIGMA,
                                overlap_thresh=cfg.TEST.NMS, score_thresh=0.0001,
                                method=cfg.TEST.SOFT_NMS.METHOD)
        else:
            nms_dets = dets_j[nms(dets_j, cfg.TEST.NMS), :]
        if cfg.TEST.BBOX_VOTE.ENABLED and nms_dets.shape[0] > 0:
            # Detectron calls box_voting without beta (so 1.0): SCORING_METHOD_BETA has no
            # effect there, nor here (config_compat.IGNORED_KEYS warns when it is set)
            nms_dets = box_utils.box_voting(nms_dets, dets_j, cfg.TEST.BBOX_VOTE.VOTE_TH,
                                            scoring_method=cfg.TEST.BBOX_VOTE.SCORING_METHOD)
        cls_boxes[j] = nms_dets

    if cfg.TEST.DETECTIONS_PER_IM > 0:
        image_scores = np.hstack([cls_boxes[j][:, -1] for j in range(1, num_classes)])
        if len(image_scores) > cfg.TEST.DETECTIONS_PER_IM:
            image_thresh = np.sort(image_scores)[-cfg.TEST.DETECTIONS_PER_IM]
            for j in range(1, num_classes):
                cls_boxes[j] = cls_boxes[j][cls_boxes[j][:, -1] >= image_thresh, :]

    im_results = np.vstack([cls_boxes[j] for j in range(1, num_classes)])
    return im_results[:, -1], im_results[:, :-1], cls_boxes


def nms(dets, thresh):
    """Greedy NMS of (n, 5) numpy dets (IoU >= ``thresh`` suppresses, as in Detectron) -> kept
    indices in increasing order, as ``cython_nms.nms`` returns them (``np.where(suppressed ==
    0)[0]``): the survivors stay in the order of ``dets``' rows."""
    from pydetectron import ops
    if dets.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    keep = ops.nms(torch.from_numpy(np.ascontiguousarray(dets[:, :4])),
                   torch.from_numpy(np.ascontiguousarray(dets[:, 4])), float(thresh))
    return np.sort(keep.numpy())


def soft_nms(dets, sigma=0.5, overlap_thresh=0.3, score_thresh=0.001, method='linear'):
    """Soft-NMS (https://arxiv.org/abs/1704.04503) of (n, 5) numpy dets -> the kept (k, 5) dets
    with their decayed scores."""
    from pydetectron import ops
    if dets.shape[0] == 0:
        return dets
    if method not in ('hard', 'linear', 'gaussian'):
        raise ValueError("TEST.SOFT_NMS.METHOD must be 'hard', 'linear' or 'gaussian', got %r"
                         % (method,))
    boxes, scores, _ = ops.soft_nms(
        torch.from_numpy(np.ascontiguousarray(dets[:, :4])),
        torch.from_numpy(np.ascontiguousarray(dets[:, 4])),
        sigma=sigma, overlap_thresh=overlap_thresh, score_thresh=score_thresh, method=method)
    return np.hstack((boxes.numpy(), scores.numpy()[:, None])).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- #
# Masks
# ---------------------------------------------------------------------------------------------- #

def _mask_probs(model, blob_conv, boxes_list, im_scales, on_device=False):
    """(R, C or 1, M, M) mask probabilities of the detected boxes, split per image (numpy, or
    float32 tensors left on the model's device with ``on_device``)."""
    rois = _rois_blob(boxes_list, im_scales, model_device(model))
    with torch.no_grad():
        masks = model.mask_net(blob_conv, rois).float()
    if not on_device:
        masks = masks.cpu().numpy()
    return _split_rows(masks, boxes_list)


def _split_rows(arr, boxes_list):
    out, start = [], 0
    for b in boxes_list:
        out.append(arr[start:start + b.shape[0]])
        start += b.shape[0]
    return out


def im_detect_mask(model, im_scales, boxes_list, blob_conv):
    """Soft masks of the detected boxes (image pixels) on features already computed.

    Returns per image an (R_i, C, M, M) array (C = 1 without ``MRCNN.CLS_SPECIFIC_MASK``); on a
    CUDA model, a float32 tensor left on the GPU for ``mask_results`` to paste there.
    """
    return _mask_probs(model, blob_conv, boxes_list, im_scales,
                       on_device=model_device(model).type == 'cuda')


def _masks_at(model, ims, boxes_list, target_scale, target_max_size, hflip=False):
    if hflip:
        ims = [np.ascontiguousarray(im[:, ::-1, :]) for im in ims]
        boxes_list = [box_utils.flip_boxes(b, im.shape[1]) for b, im in zip(boxes_list, ims)]
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


def _segms_of_image(cls_boxes, masks, ref_boxes, im_size, device):
    """``cls_segms`` of one image: pasted and encoded on the GPU for a CUDA model
    (``core.mask_results``, only the RLE runs come to the host), else by Detectron's per-mask
    loop on the host (``segm_results``; faster than the batched products on a CPU)."""
    if device.type == 'cuda':
        masks = torch.as_tensor(masks).to(device)
        return mask_results.segm_results(cls_boxes, masks, ref_boxes, im_size[0], im_size[1],
                                         cfg.MRCNN.RESOLUTION, cfg.MRCNN.CLS_SPECIFIC_MASK,
                                         cfg.MRCNN.THRESH_BINARIZE)
    if torch.is_tensor(masks):
        masks = masks.cpu().numpy()
    return segm_results(cls_boxes, masks, ref_boxes, im_size[0], im_size[1])


def segm_results(cls_boxes, masks, ref_boxes, im_h, im_w):
    """Paste (R, C, M, M) soft masks into the image and RLE-encode them -> cls_segms.

    ``ref_boxes`` (R, 4) are the detections in class order (rows of ``cls_boxes`` 1, 2, ...).
    As in Detectron, each M x M mask is zero-padded by one cell and its box expanded by
    (M + 2) / M to match (without the padding, cv2.resize would extend the border values),
    resized to the integer box, thresholded at ``MRCNN.THRESH_BINARIZE`` and placed in the image.
    """
    num_classes = cfg.MODEL.NUM_CLASSES
    cls_segms = [[] for _ in range(num_classes)]
    M = cfg.MRCNN.RESOLUTION
    scale = (M + 2.0) / M
    # float32 arithmetic then truncation, as Detectron's expand_boxes on its float32 boxes
    ref_boxes = box_utils.expand_boxes(np.asarray(ref_boxes, dtype=np.float32), scale)
    ref_boxes = ref_boxes.astype(np.int32)
    padded_mask = np.zeros((M + 2, M + 2), dtype=np.float32)
    mask_ind = 0
    for j in range(1, num_classes):
        segms = []
        for _ in range(len(cls_boxes[j])):
            c = j if cfg.MRCNN.CLS_SPECIFIC_MASK else 0
            padded_mask[1:-1, 1:-1] = masks[mask_ind, c, :, :]
            ref_box = ref_boxes[mask_ind, :]
            w = max(int(ref_box[2] - ref_box[0] + 1), 1)
            h = max(int(ref_box[3] - ref_box[1] + 1), 1)
            mask = cv2.resize(padded_mask, (w, h))
            mask = np.array(mask > cfg.MRCNN.THRESH_BINARIZE, dtype=np.uint8)
            im_mask = np.zeros((im_h, im_w), dtype=np.uint8)
            x_0, x_1 = max(ref_box[0], 0), min(ref_box[2] + 1, im_w)
            y_0, y_1 = max(ref_box[1], 0), min(ref_box[3] + 1, im_h)
            im_mask[y_0:y_1, x_0:x_1] = mask[(y_0 - ref_box[1]):(y_1 - ref_box[1]),
                                             (x_0 - ref_box[0]):(x_1 - ref_box[0])]
            segms.append(mask_util.encode(np.array(im_mask[:, :, np.newaxis], order='F'))[0])
            mask_ind += 1
        cls_segms[j] = segms
    if mask_ind != masks.shape[0]:
        raise ValueError('segm_results: %d masks for %d boxes' % (masks.shape[0], mask_ind))
    return cls_segms


# ---------------------------------------------------------------------------------------------- #
# Keypoints
# ---------------------------------------------------------------------------------------------- #

def _heatmaps(model, blob_conv, boxes_list, im_scales):
    """(R, K, Hk, Wk) heatmap logits of the detected boxes, split per image (numpy)."""
    rois = _rois_blob(boxes_list, im_scales, model_device(model))
    with torch.no_grad():
        hms = model.keypoint_net(blob_conv, rois).float().cpu().numpy()
    return _split_rows(hms, boxes_list)


def im_detect_keypoints(model, im_scales, boxes_list, blob_conv):
    """Keypoint heatmap logits of the detected boxes on features already computed: per image an
    (R_i, K, Hk, Wk) array."""
    return _heatmaps(model, blob_conv, boxes_list, im_scales)


def _heatmaps_at(model, ims, boxes_list, target_scale, target_max_size, hflip=False,
                 keypoint_names=None):
    if hflip:
        ims = [np.ascontiguousarray(im[:, ::-1, :]) for im in ims]
        boxes_list = [box_utils.flip_boxes(b, im.shape[1]) for b, im in zip(boxes_list, ims)]
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


def keypoint_results(cls_boxes, pred_heatmaps, ref_boxes):
    """Decode (R, K, Hk, Wk) heatmaps on the (R, 4) detections -> cls_keyps (person class only).

    With ``KRCNN.NMS_OKS`` the poses also go through OKS-NMS (threshold 0.3), which drops the
    matching rows of ``cls_boxes[person]`` in place, as Detectron does.
    """
    num_classes = cfg.MODEL.NUM_CLASSES
    cls_keyps = [[] for _ in range(num_classes)]
    person_idx = keypoint_utils.get_person_class_index()
    xy_preds = keypoint_utils.heatmaps_to_keypoints(pred_heatmaps, ref_boxes,
                                                    min_size=cfg.KRCNN.INFERENCE_MIN_SIZE)
    if cfg.KRCNN.NMS_OKS:
        keep = keypoint_utils.nms_oks(xy_preds, ref_boxes, 0.3)
        xy_preds = xy_preds[keep, :, :]
        cls_boxes[person_idx] = cls_boxes[person_idx][keep, :]
    cls_keyps[person_idx] = [xy_preds[i] for i in range(xy_preds.shape[0])]
    return cls_keyps
