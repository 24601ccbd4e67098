"""RetinaNet inference from BGR images to Detectron's ``cls_boxes`` (Detectron's
``core/test_retinanet.py``), reached through ``core.test.im_detect_all`` when
``RETINANET.RETINANET_ON``.

The images go through the network ``TEST.SCALE`` / ``TEST.MAX_SIZE`` at a time in one blob (padded
to ``FPN.COARSEST_STRIDE``); the candidates of every level are selected and decoded on the device
(``modeling.retinanet_postprocess``), then class-wise NMS at ``TEST.NMS`` -- or soft-NMS with
``TEST.SOFT_NMS.ENABLED``, in numpy as Detectron -- and the ``TEST.DETECTIONS_PER_IM`` best.
Detectron runs no test-time augmentation for RetinaNet (its ``im_detect_all`` returns before the
``TEST.BBOX_AUG`` branch); ``assert_and_infer_cfg`` rejects ``TEST.BBOX_AUG.ENABLED`` with RetinaNet
instead of ignoring it, and RetinaNet has no masks or keypoints.
"""
import numpy as np
import torch

from pydetectron.core.config import cfg
from pydetectron.modeling import retinanet_postprocess

__all__ = ["im_detect_bbox", "cls_boxes_from_detections"]


def cls_boxes_from_detections(boxes, scores, classes, num_classes):
    """Detectron's per-class list: cls_boxes[j] (n_j, 5) float32 of class j (j = 0 empty), each
    class best first."""
    cls_boxes = [[] for _ in range(num_classes)]
    for j in range(1, num_classes):
        sel = classes == j
        cls_boxes[j] = np.hstack((boxes[sel], scores[sel, None])).astype(np.float32)
    return cls_boxes


def _soft_nms_and_limit(dets, num_classes):
    """Detectron's soft-NMS branch, class by class in numpy, then the per-image limit."""
    from pydetectron.core.test import soft_nms
    boxes = dets['boxes'].cpu().numpy().astype(np.float32)
    scores = dets['scores'].cpu().numpy().astype(np.float32)
    classes = dets['classes'].cpu().numpy()
    out_b, out_s, out_c = [], [], []
    for j in range(1, num_classes):
        sel = classes == j
        if not sel.any():
            continue
        cls_dets = np.hstack((boxes[sel], scores[sel, None]))
        nms_dets = soft_nms(cls_dets, sigma=cfg.TEST.SOFT_NMS.SIGMA,
                            overlap_thresh=cfg.TEST.NMS, score_thresh=0.0001,
                            method=cfg.TEST.SOFT_NMS.METHOD)
        out_b.append(nms_dets[:, :4])
        out_s.append(nms_dets[:, 4])
        out_c.append(np.full(nms_dets.shape[0], j, dtype=np.int64))
    if not out_b:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    boxes, scores, classes = np.vstack(out_b), np.concatenate(out_s), np.concatenate(out_c)
    order = np.argsort(-scores, kind='stable')
    if cfg.TEST.DETECTIONS_PER_IM > 0:
        order = order[:cfg.TEST.DETECTIONS_PER_IM]
    return boxes[order], scores[order], classes[order]


def im_detect_bbox(model, ims, target_scale=None, target_max_size=None):
    """RetinaNet detections of a list of BGR images -> a list of ``cls_boxes`` (see the module)."""
    from pydetectron.core.test import _forward
    target_scale = cfg.TEST.SCALE if target_scale is None else target_scale
    target_max_size = cfg.TEST.MAX_SIZE if target_max_size is None else target_max_size
    out, im_info, _ = _forward(model, ims, target_scale, target_max_size)
    im_sizes = torch.tensor([im.shape[:2] for im in ims], dtype=torch.float32)
    head = getattr(model, 'module', model).RetinaNet
    cands = retinanet_postprocess.level_candidates(
        head, out['retnet_cls_prob'], out['retnet_bbox_pred'], im_info, im_sizes,
        cfg.RETINANET.INFERENCE_TH, cfg.RETINANET.PRE_NMS_TOP_N, cfg.TEST.BBOX_REG,
        cfg.BBOX_XFORM_CLIP)
    num_classes = cfg.MODEL.NUM_CLASSES
    if cfg.TEST.SOFT_NMS.ENABLED:
        per_image = []
        for n in range(len(ims)):
            v = cands['valid'][n]
            per_image.append(_soft_nms_and_limit(
                {k: cands[k][n][v] for k in ('boxes', 'scores', 'classes')}, num_classes))
    else:
        per_image = []
        for d in retinanet_postprocess.batched_nms_and_limit(
                cands, num_classes, cfg.TEST.NMS, cfg.TEST.DETECTIONS_PER_IM):
            per_image.append((d['boxes'].cpu().numpy().astype(np.float32),
                              d['scores'].cpu().numpy().astype(np.float32),
                              d['classes'].cpu().numpy()))
    return [cls_boxes_from_detections(b, s, c, num_classes) for b, s, c in per_image]
