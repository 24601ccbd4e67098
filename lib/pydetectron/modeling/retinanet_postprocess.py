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

__all__ = ["candidate_detections", "nms_and_limit", "detect"]


def candidate_detections(head, cls_probs, bbox_pred, im_info, im_sizes, inference_th=0.05,
                         pre_nms_top_n=1000, bbox_reg=True, clip=BBOX_XFORM_CLIP):
    """Steps 1-3 of the module for every image: a list (one per image) of dicts with ``boxes``
    (M, 4) float32 in original image pixels, ``scores`` (M,), ``classes`` (M,) int64 in 1..C-1,
    level by level (finest first), each level's candidates best first.

    cls_probs / bbox_pred: per level (N, A*K, H, W) / (N, A*B, H, W); im_info (N, 3) with the
    scale in column 2; im_sizes (N, 2) original (height, width).
    """
    A = head.num_anchors
    N = cls_probs[0].shape[0]
    im_sizes = torch.as_tensor(im_sizes, dtype=torch.float32).view(N, 2)
    results = [{'boxes': [], 'scores': [], 'classes': []} for _ in range(N)]
    for (cell, stride), probs, deltas, lvl in zip(
            head.cell_anchors(), cls_probs, bbox_pred, range(head.k_min, head.k_max + 1)):
        _, D, H, W = probs.shape
        K = D // A
        th = inference_th if lvl < head.k_max else 0.0
        for n in range(N):
            p = probs[n].view(A, K, H, W)
            if head.softmax:
                p = p[:, 1:]
            Kf = p.shape[1]
            flat = p.reshape(-1).float()
            cand = torch.nonzero(flat > th).squeeze(1)
            if cand.numel() == 0:
                continue
            k = min(int(pre_nms_top_n), cand.numel())
            scores, order = flat[cand].topk(k, sorted=True)
            idx = cand[order]
            x = idx % W
            y = (idx // W) % H
            cls = (idx // (W * H)) % Kf
            a = idx // (W * H * Kf)
            shift = torch.stack([x, y, x, y], dim=1).to(torch.float32) * stride
            boxes = shift + cell[a]
            if bbox_reg:
                if head.class_specific_bbox:
                    d = deltas[n].view(A, head.num_classes - 1, 4, H, W)
                    box_deltas = d[a, cls, :, y, x]
                else:
                    box_deltas = deltas[n].view(A, 4, H, W)[a, :, y, x]
                boxes = bbox_transform(boxes, box_deltas.float(), (1.0, 1.0, 1.0, 1.0), clip)
            boxes = boxes / im_info[n, 2].float()
            h, w = float(im_sizes[n, 0]) - 1, float(im_sizes[n, 1]) - 1
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
            results[n]['boxes'].append(boxes)
            results[n]['scores'].append(scores)
            results[n]['classes'].append(cls + 1)
    device = cls_probs[0].device
    out = []
    for r in results:
        if r['boxes']:
            out.append({k: torch.cat(v) for k, v in r.items()})
        else:
            out.append({'boxes': torch.zeros((0, 4), device=device),
                        'scores': torch.zeros((0,), device=device),
                        'classes': torch.zeros((0,), dtype=torch.int64, device=device)})
    return out


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
    cands = candidate_detections(
        model.RetinaNet, out['retnet_cls_prob'], out['retnet_bbox_pred'], im_info, im_sizes,
        params['inference_th'], params['pre_nms_top_n'], params['bbox_reg'], params['clip'])
    return [nms_and_limit(c, params['nms_thresh'], params['detections_per_im']) for c in cands]
