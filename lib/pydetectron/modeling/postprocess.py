"""Detectron's test-time box post-processing, on the device and batched over images
(``core/test.py``: ``im_detect_bbox`` decoding and ``box_results_with_nms_and_limit``).

Shapes: R RoIs of N images, C = NUM_CLASSES (class 0 is background), D detections of an image.

1. ``decode_boxes``: boxes = rois / im_scale (original image coordinates), decoded per class with
   MODEL.BBOX_REG_WEIGHTS and BBOX_XFORM_CLIP (TEST.BBOX_REG False keeps the RoIs), clipped to the
   original image -> (R, 4C). A class-agnostic regressor's last 4 deltas serve every class.
2. ``box_results_with_nms_and_limit``: per image and class j >= 1, the scores > TEST.SCORE_THRESH,
   NMS at TEST.NMS, then at most TEST.DETECTIONS_PER_IM over all classes (Detectron keeps every
   detection scoring >= the N-th best, so ties may keep a few more). Detections come class by
   class, each class's survivors in RoI order: Detectron's ``cython_nms.nms`` returns the kept
   indices in input order (``np.where(suppressed == 0)``) and the limit filters with ``np.where``,
   so ``cls_boxes[j]`` rows follow the rows of ``rois``, not the scores.
3. ``box_results_soft_nms_vote``: the same for one image with TEST.SOFT_NMS and / or
   TEST.BBOX_VOTE, class by class on the device: Detectron's Soft-NMS (``ops.soft_nms``, rows in
   its selection order) or NMS (rows in RoI order), then each survivor replaced by the
   score-weighted mean of its class's thresholded boxes overlapping it with IoU >= VOTE_TH, its
   score by SCORING_METHOD (``utils.boxes.box_voting``), then the per-image limit.
"""
from collections import namedtuple

import torch

from pydetectron.modeling.generate_proposals import group_by_image, rank_within_image
from pydetectron.utils.boxes import BBOX_XFORM_CLIP, BOX_VOTING_METHODS, bbox_transform

__all__ = ["PostprocessParams", "decode_boxes", "box_results_with_nms_and_limit",
           "box_results_soft_nms_vote", "detect"]


class PostprocessParams(namedtuple("PostprocessParams", [
        "bbox_reg", "bbox_reg_weights", "bbox_xform_clip", "cls_agnostic_bbox_reg",
        "score_thresh", "nms_thresh", "detections_per_im"])):
    """The TEST.* / MODEL.* settings of the box post-processing."""

    @classmethod
    def from_cfg(cls):
        from pydetectron.core.config import cfg
        return cls(cfg.TEST.BBOX_REG, tuple(cfg.MODEL.BBOX_REG_WEIGHTS), cfg.BBOX_XFORM_CLIP,
                   cfg.MODEL.CLS_AGNOSTIC_BBOX_REG, cfg.TEST.SCORE_THRESH, cfg.TEST.NMS,
                   cfg.TEST.DETECTIONS_PER_IM)


def _original_sizes(im_info, im_sizes):
    """(N, 2) original (height, width): given, or estimated as blob size / im_scale."""
    if im_sizes is not None:
        return torch.as_tensor(im_sizes, dtype=torch.float32, device=im_info.device).view(-1, 2)
    return torch.round(im_info[:, :2] / im_info[:, 2:3])


def decode_boxes(rois, bbox_pred, num_classes, im_info, im_sizes=None, bbox_reg=True,
                 weights=(10., 10., 5., 5.), clip=BBOX_XFORM_CLIP, cls_agnostic_bbox_reg=False):
    """(R, 4C) class boxes in original image coordinates, clipped to each image.

    rois (R, 5) in blob scale; bbox_pred (R, 4C) or (R, 8) (class-agnostic); im_info (N, 3);
    im_sizes (N, 2) original (height, width) (default: blob size / im_scale, rounded).
    """
    im_info = im_info.to(dtype=torch.float32)
    rois, bbox_pred = rois.float(), bbox_pred.float()  # box geometry in float32 (bf16 under amp)
    im_inds = rois[:, 0].to(torch.int64)
    scales = im_info[im_inds, 2].view(-1, 1)
    boxes = rois[:, 1:5] / scales
    if not bbox_reg:
        pred = boxes.repeat(1, num_classes)  # Detectron: the RoIs themselves for every class
    else:
        deltas = bbox_pred[:, -4:] if cls_agnostic_bbox_reg else bbox_pred
        pred = bbox_transform(boxes, deltas, weights, clip)
        if cls_agnostic_bbox_reg:
            pred = pred.repeat(1, num_classes)
    # Detectron's clip, max(min(x, width - 1), 0) and the same for y, on the (x, y) pairs of
    # every box at once: the same float operations per element, a few operators in all
    sizes = _original_sizes(im_info, im_sizes)[im_inds]  # (R, 2) (height, width)
    r, k = pred.shape
    xy_max = (sizes.flip(1) - 1).view(r, 1, 2)               # (width - 1, height - 1)
    pred = torch.maximum(torch.minimum(pred.reshape(r, k // 2, 2), xy_max), pred.new_zeros(()))
    return pred.view(r, k)


def box_results_with_nms_and_limit(scores, boxes, im_inds, num_images, score_thresh=0.05,
                                   nms_thresh=0.5, detections_per_im=100):
    """Class-wise NMS and the per-image limit for a batch.

    scores (R, C) probabilities; boxes (R, 4C); im_inds (R,) image of each RoI.
    Returns one dict per image: 'boxes' (D, 4), 'scores' (D,), 'classes' (D,) int64 in 1..C-1.
    """
    from pydetectron.ops import batched_nms_mask
    scores, boxes = scores.float(), boxes.float()
    c = scores.shape[1]
    im_inds = im_inds.to(torch.int64)
    roi_i, cls, cand_scores, cand_boxes = _candidates(scores, boxes, score_thresh)  # host sync 1
    cand_img = im_inds[roi_i]
    # Keep flags from here on (fixed sizes, no host sync) until the final selection.
    keep = batched_nms_mask(cand_boxes, cand_scores, cand_img * c + cls, nms_thresh)
    if detections_per_im > 0:
        # Detectron keeps each image's detections scoring >= its detections_per_im-th best score
        # (ties at that score included); the threshold is -inf where an image has fewer.
        ranked = torch.where(keep, cand_scores, cand_scores.new_full((), float("-inf")))
        by_score = group_by_image(ranked, cand_img)
        rank = rank_within_image(cand_img[by_score], num_images)
        at_limit = torch.where(rank == detections_per_im - 1, ranked[by_score],
                               ranked.new_full((), float("-inf")))
        thresh = ranked.new_full((num_images,), float("-inf")).scatter_reduce(
            0, cand_img[by_score], at_limit, reduce="amax")
        keep = keep & (cand_scores >= thresh[cand_img])
    counts = torch.zeros(num_images, dtype=torch.int64, device=keep.device).scatter_add_(
        0, cand_img, keep.to(torch.int64)).tolist()  # host sync 2: detections per image
    # The kept candidates in Detectron's order: image, then class, then RoI order. The
    # candidates come from nonzero() in (RoI, class) order, so stable sorts by class and then by
    # image leave each (image, class) group in RoI order.
    order = torch.argsort(cls, stable=True)
    order = order[torch.argsort(cand_img[order], stable=True)]
    order = order[torch.argsort(~keep[order], stable=True)[:sum(counts)]]
    results = []
    for b, sc, k in zip(cand_boxes[order].split(counts), cand_scores[order].split(counts),
                        cls[order].split(counts)):
        results.append({"boxes": b, "scores": sc, "classes": k})
    return results


def _candidates(scores, boxes, score_thresh):
    """The (RoI, class >= 1) pairs of (R, C) ``scores`` above ``score_thresh``, in (RoI, class)
    order (nonzero: one host sync) -> their RoI indices, classes, scores and (M, 4) class boxes
    taken from the (R, 4C) ``boxes``."""
    r, c = scores.shape
    cand = torch.nonzero(scores[:, 1:] > score_thresh)
    roi_i, cls = cand[:, 0], cand[:, 1] + 1
    return roi_i, cls, scores[roi_i, cls], boxes.view(r, c, 4)[roi_i, cls]


def box_results_soft_nms_vote(scores, boxes, score_thresh=0.05, nms_thresh=0.5,
                              detections_per_im=100, soft_nms=None, bbox_vote=None):
    """One image's (R, C) scores and (R, 4C) boxes -> {'boxes', 'scores', 'classes'} on their
    device, as ``core.test.box_results_with_nms_and_limit`` computes them in numpy.

    ``soft_nms``: None (plain NMS) or a dict of ``sigma`` and ``method`` (Detectron calls it with
    TEST.NMS as the overlap threshold and a score threshold of 0.0001); ``bbox_vote``: None or a
    dict of ``thresh``, ``scoring_method`` and ``beta`` (Detectron passes none: 1.0).
    """
    from pydetectron import ops
    scores, boxes = scores.float(), boxes.float()
    c = scores.shape[1]
    _, cls, cand_scores, cand_boxes = _candidates(scores, boxes, score_thresh)  # host sync
    order = torch.argsort(cls, stable=True)                      # by class, RoI order within
    cls, cand_scores, cand_boxes = cls[order], cand_scores[order], cand_boxes[order]
    counts = torch.bincount(cls, minlength=c).tolist()           # host sync
    kept_boxes, kept_scores, kept_classes = [], [], []
    start = 0
    for j in range(1, c):
        b, s = cand_boxes[start:start + counts[j]], cand_scores[start:start + counts[j]]
        start += counts[j]
        if counts[j] == 0:
            continue
        if soft_nms is not None:
            kb, ks, _ = ops.soft_nms(b, s, sigma=soft_nms["sigma"], overlap_thresh=nms_thresh,
                                     score_thresh=0.0001, method=soft_nms["method"])
        else:
            keep = torch.sort(ops.nms(b, s, nms_thresh))[0]       # RoI order, as Detectron's
            kb, ks = b[keep], s[keep]
        if bbox_vote is not None and kb.shape[0] > 0:
            kb, ks = _box_voting(kb, ks, b, s, bbox_vote["thresh"], bbox_vote["scoring_method"],
                                 bbox_vote.get("beta", 1.0))
        kept_boxes.append(kb)
        kept_scores.append(ks)
        kept_classes.append(torch.full((kb.shape[0],), j, dtype=torch.int64, device=kb.device))
    if not kept_boxes:
        return {"boxes": boxes.new_zeros((0, 4)), "scores": scores.new_zeros((0,)),
                "classes": torch.zeros((0,), dtype=torch.int64, device=scores.device)}
    out_b, out_s, out_c = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_classes)
    if 0 < detections_per_im < out_s.shape[0]:
        # every detection scoring >= the detections_per_im-th best (ties kept), order kept
        thresh = torch.sort(out_s, descending=True)[0][detections_per_im - 1]
        sel = out_s >= thresh
        out_b, out_s, out_c = out_b[sel], out_s[sel], out_c[sel]
    return {"boxes": out_b, "scores": out_s, "classes": out_c}


def _box_voting(top_boxes, top_scores, all_boxes, all_scores, thresh, scoring_method, beta):
    """``utils.boxes.box_voting`` on tensors: (K, 4) survivors refined by the (N, 4) thresholded
    boxes of their class -> (K, 4) boxes, (K,) scores."""
    from pydetectron.ops import box_iou
    iou = box_iou(top_boxes, all_boxes)                          # (K, N)
    voter = (iou >= thresh).to(all_scores.dtype)
    w = voter * all_scores[None, :]
    new_boxes = (w @ all_boxes) / w.sum(dim=1, keepdim=True)
    n = voter.sum(dim=1)
    if scoring_method == "ID":
        new_scores = top_scores
    elif scoring_method == "AVG":
        new_scores = w.sum(dim=1) / n
    elif scoring_method == "IOU_AVG":
        wi = voter * iou
        new_scores = (wi * all_scores[None, :]).sum(dim=1) / wi.sum(dim=1)
    elif scoring_method == "TEMP_AVG":
        p = torch.stack((all_scores, 1.0 - all_scores))            # (2, N)
        x = torch.log(p / p.max(dim=0).values)
        x_exp = torch.exp(x / beta)
        soft = (x_exp / x_exp.sum(dim=0))[0]                       # (N,)
        new_scores = (voter * soft[None, :]).sum(dim=1) / n
    elif scoring_method == "GENERALIZED_AVG":
        new_scores = ((voter * all_scores[None, :] ** beta).sum(dim=1) / n) ** (1.0 / beta)
    elif scoring_method == "QUASI_SUM":
        new_scores = w.sum(dim=1) / n ** beta
    else:
        raise ValueError("box voting: unknown scoring_method %r (expected one of %s)"
                         % (scoring_method, ", ".join(BOX_VOTING_METHODS)))
    return new_boxes, new_scores


def _rois_for_detections(results, im_info):
    """(D_all, 5) blob-scale rois of the detections (Detectron: boxes * im_scale, then float32)."""
    rois = []
    for i, res in enumerate(results):
        boxes = res["boxes"].double() * im_info[i, 2].double()
        inds = boxes.new_full((boxes.shape[0], 1), float(i))
        rois.append(torch.cat([inds, boxes], dim=1).float())
    return torch.cat(rois, dim=0)


def detect(model, data, im_info, im_sizes=None, rois=None):
    """Run ``model`` (a Generalized_RCNN in eval mode) and post-process on the device.

    ``im_sizes`` (N, 2): each original image's (height, width), to clip the boxes (default: the
    blob size / im_scale); ``rois``: the proposals of a model without RPN (Fast R-CNN).
    Returns one dict per image: 'boxes' (D, 4) in original image coordinates, 'scores' (D,),
    'classes' (D,); with masks, 'masks' (D, M, M) probabilities of each detection's class; with
    keypoints, 'keypoint_heatmaps' (D, K, Hk, Wk) scores.
    """
    p = model.postprocess_params
    im_info = torch.as_tensor(im_info, dtype=torch.float32, device=data.device)
    out = model(data, im_info, rois=rois)
    if model.rpn_only:
        raise RuntimeError("detect(): an RPN-only model has no detections; use model(...)['rois']")
    num_images = data.shape[0]
    boxes = decode_boxes(out["rois"], out["bbox_pred"], model.num_classes, im_info, im_sizes,
                         p.bbox_reg, p.bbox_reg_weights, p.bbox_xform_clip, p.cls_agnostic_bbox_reg)
    results = box_results_with_nms_and_limit(out["cls_score"], boxes, out["rois"][:, 0],
                                             num_images, p.score_thresh, p.nms_thresh,
                                             p.detections_per_im)
    if model.mask_on or model.keypoints_on:
        rois = _rois_for_detections(results, im_info)
        counts = [r["boxes"].shape[0] for r in results]
        if model.mask_on:
            masks = model.mask_net(out["blob_conv"], rois)  # (D_all, C, M, M)
            classes = torch.cat([r["classes"] for r in results])
            if masks.shape[1] > 1:
                masks = masks[torch.arange(masks.shape[0], device=masks.device), classes]
            else:
                masks = masks[:, 0]
            for res, m in zip(results, masks.split(counts)):
                res["masks"] = m
        if model.keypoints_on:
            heatmaps = model.keypoint_net(out["blob_conv"], rois)
            for res, h in zip(results, heatmaps.split(counts)):
                res["keypoint_heatmaps"] = h
    return results
