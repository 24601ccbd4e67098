"""RetinaNet's test-time box post-processing on the device (Detectron's
``core/test_retinanet.py: im_detect_bbox``), batched over the images of a blob.

Per image and level l (k_min..k_max), on the (A, K, H, W) class probabilities (the background
column of a softmax dropped):
  1. candidates: probabilities > ``RETINANET.INFERENCE_TH`` -- > 0 on the coarsest level, which
     Detectron does so that small images always get some detection;
  2. the ``RETINANET.PRE_NMS_TOP_N`` best candidates of the level;
  3. their anchors (cell anchor a shifted by (x, y) * stride) decoded by the cell's deltas (the
     class's deltas with class-specific regression) with weights (1, 1, 1, 1) and
     ``BBOX_XFORM_CLIP`` when ``TEST.BBOX_REG``, divided by the image scale, clipped to the
     original image.
Then, per image over all levels: class-wise NMS at ``TEST.NMS`` and the ``TEST.DETECTIONS_PER_IM``
best detections (``nms_and_limit``; ``core.test_retinanet`` runs soft-NMS instead when asked).

Detectron decodes in the blob's scale and then divides by the scale (the R-CNN path divides the
RoIs first); kept here.
"""
import torch

from pydetectron import ops
from pydetectron.utils.boxes import BBOX_XFORM_CLIP, bbox_transform

__all__ = ["level_candidates", "candidate_detections", "batched_nms_and_limit", "nms_and_limit",
           "detect"]


def level_candidates(head, cls_probs, bbox_pred, im_info, im_sizes, inference_th=0.05,
                     pre_nms_top_n=1000, bbox_reg=True, clip=BBOX_XFORM_CLIP):
    """Steps 1-3 of the module for the whole batch with fixed sizes (no host synchronisation):
    a dict of (N, M) tensors, M = the sum over levels of min(PRE_NMS_TOP_N, A * K * H_l * W_l):
    ``boxes`` (N, M, 4) float32 in original image pixels, ``scores``, ``classes`` (int64 in
    1..C-1) and ``valid`` (bool: a candidate of its level's top-k above its threshold), level by
    level (finest first), each level's entries best first.

    cls_probs / bbox_pred: per level (N, A*K, H, W) / (N, A*B, H, W); im_info (N, 3) with the
    scale in column 2; im_sizes (N, 2) original (height, width).
    """
    A = head.num_anchors
    N = cls_probs[0].shape[0]
    device = cls_probs[0].device
    im_sizes = torch.as_tensor(im_sizes, dtype=torch.float32, device=device).view(N, 1, 2)
    scales = im_info[:, 2].float().view(N, 1, 1)
    # clip bounds (w - 1, h - 1, w - 1, h - 1) of each original image
    hi = torch.cat([im_sizes[..., 1:2], im_sizes[..., 0:1]] * 2, dim=2) - 1
    out = {'boxes': [], 'scores': [], 'classes': [], 'valid': []}
    for (cell, stride), probs, deltas, lvl in zip(
            head.cell_anchors(), cls_probs, bbox_pred, range(head.k_min, head.k_max + 1)):
        _, D, H, W = probs.shape
        p = probs.float().view(N, A, D // A, H, W)
        if head.softmax:
            p = p[:, :, 1:]
        K = p.shape[2]
        flat = p.reshape(N, -1)                       # index ((a * K + k) * H + y) * W + x
        th = inference_th if lvl < head.k_max else 0.0
        k = min(int(pre_nms_top_n), flat.shape[1])
        # probabilities are >= 0: -1 ranks every non-candidate after every candidate
        scores, idx = torch.where(flat > th, flat, flat.new_full((), -1.)).topk(k, dim=1)
        x = idx % W
        y = (idx // W) % H
        cls = (idx // (W * H)) % K
        a = idx // (W * H * K)
        shift = torch.stack([x, y, x, y], dim=2).to(torch.float32) * stride
        boxes = shift + cell[a]                                             # (N, k, 4)
        if bbox_reg:
            if head.class_specific_bbox:
                C1 = head.num_classes - 1   # channel (a * (C - 1) + class - 1) * 4 + j
                d = deltas.float().view(N, A * C1, 4, H * W).permute(0, 1, 3, 2).reshape(N, -1, 4)
                cell_idx = (a * C1 + cls) * (H * W) + y * W + x
            else:
                d = deltas.float().view(N, A, 4, H * W).permute(0, 1, 3, 2).reshape(N, -1, 4)
                cell_idx = a * (H * W) + y * W + x
            box_deltas = d.gather(1, cell_idx.unsqueeze(2).expand(N, k, 4))
            boxes = bbox_transform(boxes.reshape(-1, 4), box_deltas.reshape(-1, 4),
                                   (1.0, 1.0, 1.0, 1.0), clip).view(N, k, 4)
        boxes = torch.minimum((boxes / scales).clamp(min=0), hi)
        out['boxes'].append(boxes)
        out['scores'].append(scores)
        out['classes'].append(cls + 1)
        out['valid'].append(scores > th)
    return {key: torch.cat(v, dim=1) for key, v in out.items()}


def candidate_detections(head, cls_probs, bbox_pred, im_info, im_sizes, inference_th=0.05,
                         pre_nms_top_n=1000, bbox_reg=True, clip=BBOX_XFORM_CLIP):
    """``level_candidates`` as a list (one per image) of dicts of the valid candidates only:
    ``boxes`` (M_i, 4), ``scores`` (M_i,), ``classes`` (M_i,)."""
    c = level_candidates(head, cls_probs, bbox_pred, im_info, im_sizes, inference_th,
                         pre_nms_top_n, bbox_reg, clip)
    return [{key: c[key][n][c['valid'][n]] for key in ('boxes', 'scores', 'classes')}
            for n in range(c['valid'].shape[0])]


def batched_nms_and_limit(cands, num_classes, nms_thresh=0.5, detections_per_im=100):
    """Class-wise NMS and the per-image limit on ``level_candidates``' output for all images in
    one pass: a list of per-image dicts (``boxes``, ``scores``, ``classes``), best first."""
    boxes, scores, classes, valid = cands['boxes'], cands['scores'], cands['classes'], \
        cands['valid']
    N, M = scores.shape
    im = torch.arange(N, device=scores.device).view(N, 1)
    # one NMS group per (image, class); the non-candidates in a group of their own
    groups = torch.where(valid, im * num_classes + classes, classes.new_full((), N * num_classes))
    keep = ops.batched_nms_mask(boxes.reshape(-1, 4), scores.reshape(-1), groups.reshape(-1),
                                float(nms_thresh)).view(N, M) & valid
    ranked = torch.where(keep, scores, scores.new_full((), float('-inf')))
    k = M if detections_per_im <= 0 else min(int(detections_per_im), M)
    top, order = ranked.topk(k, dim=1)
    counts = (top > float('-inf')).sum(dim=1).tolist()   # the one host synchronisation
    results = []
    for n in range(N):
        o = order[n, :counts[n]]
        results.append({'boxes': boxes[n, o], 'scores': scores[n, o], 'classes': classes[n, o]})
    return results


def nms_and_limit(dets, nms_thresh=0.5, detections_per_im=100):
    """Class-wise NMS of one image's candidates (a dict of ``candidate_detections``), then its
    ``detections_per_im`` best over all classes, best first (ties in class order)."""
    boxes, scores, classes = dets['boxes'], dets['scores'], dets['classes']
    if boxes.shape[0] == 0:
        return dets
    # class by class (ascending), each in NMS order: Detectron's concatenation before its sort
    keep = ops.batched_nms(boxes, scores, classes, float(nms_thresh))
    keep = keep[torch.argsort(classes[keep], stable=True)]
    order = torch.argsort(scores[keep], descending=True, stable=True)
    if detections_per_im > 0:
        order = order[:detections_per_im]
    keep = keep[order]
    return {'boxes': boxes[keep], 'scores': scores[keep], 'classes': classes[keep]}


def detect(model, data, im_info, im_sizes=None, params=None):
    """The whole RetinaNet test path on the device for a blob: a list of per-image dicts
    (``boxes`` (D, 4) in original pixels, ``scores``, ``classes``), best first. ``params`` is a
    dict of the settings (default: from ``cfg``)."""
    from pydetectron.core.config import cfg
    if params is None:
        params = dict(inference_th=cfg.RETINANET.INFERENCE_TH,
                      pre_nms_top_n=cfg.RETINANET.PRE_NMS_TOP_N, bbox_reg=cfg.TEST.BBOX_REG,
                      clip=cfg.BBOX_XFORM_CLIP, nms_thresh=cfg.TEST.NMS,
                      detections_per_im=cfg.TEST.DETECTIONS_PER_IM)
    if im_sizes is None:
        im_sizes = torch.round(im_info[:, :2] / im_info[:, 2:3])
    out = model(data, im_info)
    cands = level_candidates(
        model.RetinaNet, out['retnet_cls_prob'], out['retnet_bbox_pred'], im_info, im_sizes,
        params['inference_th'], params['pre_nms_top_n'], params['bbox_reg'], params['clip'])
    return batched_nms_and_limit(cands, model.RetinaNet.num_classes, params['nms_thresh'],
                                 params['detections_per_im'])
