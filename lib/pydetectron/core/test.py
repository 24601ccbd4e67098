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
augmentation of boxes, masks and keypoints with Detectron's merge heuristics (``core/test_aug.py``),
mask pasting (``segm_results``) and keypoint decoding (``keypoint_results``). The network runs on
the model's device; the box post-processing stays there (the model's ``postprocess`` helpers:
plain NMS batched over images; soft-NMS and box voting class by class on a CUDA model), and so do
a CUDA model's masks (pasted and RLE-encoded by ``core/mask_results.py``) and keypoints (decoded
by ``core/keypoint_results.py``). A CPU model runs Detectron's numpy and OpenCV code for soft-NMS,
voting, masks and keypoints (faster there than the batched tensor code).

Shapes: N images in a batch; R RoIs over the batch, R_i of image i; C = MODEL.NUM_CLASSES;
M = MRCNN.RESOLUTION; K keypoints of Hk x Wk heatmaps.
"""
from collections import defaultdict
import logging

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from pydetectron.core import keypoint_results as keypoint_results_on_device
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


def im_detect_all_batch(model, ims, box_proposals=None, timers=None, keypoint_names=None,
                        blob=None, ahead=None):
    """``im_detect_all`` over a list of images sharing the network's forward passes.

    The results equal image-by-image results when the images share one blob size, to float
    precision (a batched kernel may sum in another order). With different sizes the smaller
    images are zero-padded in the blob, which also changes their features a few pixels from
    their bottom/right border (a deeper convolution sees the padded activations, not zeros);
    batch images of one size, or one aspect ratio, where that matters.

    ``blob``: the images' ``prepare_image_blob(ims)``, made ahead (test_net makes it in its
    reader threads while the model works on the previous batch); None makes it here.
    ``ahead``: the ``FrontAhead`` of that blob (test_net queues the next image's front before it
    post-processes this one), whose outputs replace the forward pass here.
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
            model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, box_proposals, blob=blob,
            ahead=ahead)
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
        xy_preds = _decode_on_device(heatmaps, det_boxes)
        for i in range(len(ims)):
            if det_boxes[i].shape[0] > 0:
                cls_keyps[i] = keypoint_results(cls_boxes[i], heatmaps[i], det_boxes[i],
                                                xy_preds=xy_preds[i])
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
    change how proposals are clipped; nor does ``SHAPE_BUCKETS``, which pads ``data`` (the
    batch's largest size, padded to the stride) further up to a bucket size.
    """
    blob = prepare_image_blob(ims, target_scale, target_max_size)
    return blob.data.numpy(), blob.im_info.numpy(), blob.im_scales


class ImageBlob(object):
    """``get_image_blob``'s result as tensors, for a later forward pass: ``data`` (N, 3, H, W)
    float32 (in page-locked memory when made with ``pin_memory``, so that its copy to the GPU
    runs asynchronously), ``im_info`` (N, 3) float32, ``im_scales``, and the ``scale`` and
    ``max_size`` it was made for."""
    __slots__ = ('data', 'im_info', 'im_scales', 'scale', 'max_size')

    def __init__(self, data, im_info, im_scales, scale, max_size):
        self.data, self.im_info, self.im_scales = data, im_info, im_scales
        self.scale, self.max_size = scale, max_size


def prepare_image_blob(ims, target_scale=None, target_max_size=None, pin_memory=False):
    """The network input of BGR images at one scale (``TEST.SCALE`` / ``TEST.MAX_SIZE`` by
    default), made on the host before the forward pass that takes it (``im_detect_all_batch``'s
    ``blob``; ``get_image_blob`` gives the same as arrays), ``data`` written straight into
    page-locked memory with ``pin_memory`` (CUDA models)."""
    scale = cfg.TEST.SCALE if target_scale is None else target_scale
    max_size = cfg.TEST.MAX_SIZE if target_max_size is None else target_max_size
    stride = blob_utils.coarsest_stride(cfg)
    processed, im_scales, im_info = [], [], []
    for im in ims:
        im_p, im_scale = blob_utils.prep_im_for_blob(im, cfg.PIXEL_MEANS, scale, max_size)
        processed.append(im_p)
        im_scales.append(im_scale)
        h, w = blob_utils.padded_size(im_p.shape[0], im_p.shape[1], stride)
        im_info.append((h, w, im_scale))
    # SHAPE_BUCKETS pads the blob further (CUDA graphs); im_info keeps the size above
    buckets = blob_utils.cfg_shape_buckets(training=False)
    data = torch.empty(blob_utils.blob_shape(processed, stride, buckets), dtype=torch.float32,
                       pin_memory=bool(pin_memory))
    blob_utils.im_list_to_blob(processed, stride=stride, out=data.numpy(), buckets=buckets)
    return ImageBlob(data, torch.from_numpy(np.array(im_info, dtype=np.float32)), im_scales,
                     scale, max_size)


def _rois_blob(boxes_list, im_scales, device):
    """Per-image (R_i, 4) boxes in image pixels -> (R, 5) float32 rois (batch index,
    box * im_scale), the product taken in float64 as Detectron's numpy did."""
    rois = []
    for i, (b, s) in enumerate(zip(boxes_list, im_scales)):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4) * float(s)
        rois.append(np.hstack((np.full((b.shape[0], 1), float(i)), b)))
    return torch.from_numpy(np.vstack(rois).astype(np.float32)).to(device)


class FrontAhead(object):
    """``model.test_front`` (body, RPN, proposals, box head) of one image's blob, queued now --
    on a CUDA model on a side stream, after what the current stream has queued -- and read
    later (``outputs``, or ``im_detect_all_batch(..., ahead=...)``). test_net queues the next
    image's front before it post-processes the current one, so that the GPU runs the one (a
    single CUDA-graph replay, ``core.cuda_graphs``) while the host does the other.

    The front's outputs are copied when they come from a graph replay (the next replay
    overwrites them); the side stream waits for the current one before each front, so memory
    freed by the post-processing is not reused under it."""

    _streams = {}

    def __init__(self, model, blob):
        self.blob = blob
        self.event = None
        device = model_device(model)
        with torch.no_grad():
            if device.type != 'cuda':
                self._run(model, device)
                return
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                self._run(model, device)
                self.event = torch.cuda.Event()
                self.event.record(stream)
        self.device = device

    def _run(self, model, device):
        data = self.blob.data.to(device, non_blocking=True)
        self.im_info = self.blob.im_info.to(device, non_blocking=True)
        front = model.test_front
        replays = getattr(front, 'replays', None)
        out = front(data, self.im_info)
        if replays is not None and front.replays != replays:
            out = tuple(t.clone() for t in out)
        self.front = out

    def outputs(self, model):
        """(the model's output dict, im_info (1, 3), im_scales), read on the current stream."""
        if self.event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.event)
        return model.front_outputs(self.front), self.im_info, self.blob.im_scales


def _forward(model, ims, target_scale, target_max_size, rois=None, blob=None, ahead=None):
    """One forward pass over the images -> (the model's output dict, im_info (N, 3), im_scales).
    ``blob``: their ``prepare_image_blob`` made ahead (used when made for this scale);
    ``ahead``: their ``FrontAhead`` (its outputs, no forward pass here)."""
    if ahead is not None:
        return ahead.outputs(model)
    if blob is None or (blob.scale, blob.max_size) != (target_scale, target_max_size):
        blob = prepare_image_blob(ims, target_scale, target_max_size)
    device = model_device(model)
    data = blob.data.to(device, non_blocking=True)
    im_info = blob.im_info.to(device, non_blocking=True)
    im_scales = blob.im_scales
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
    if num_images == 1:
        return [slice(None)]
    batch_inds = rois[:, 0].round().long()
    return [torch.nonzero(batch_inds == i).squeeze(1) for i in range(num_images)]


def im_detect_bbox(model, ims, target_scale, target_max_size, box_proposals=None, blob=None,
                   ahead=None):
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
                                           rois=box_proposals, blob=blob)
    else:
        out, im_info, im_scales = _forward(model, ims, target_scale, target_max_size, blob=blob,
                                           ahead=ahead)

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


def im_proposals(model, ims, blob=None):
    """RPN proposals of an RPN-only model -> per-image ((R_i, 4) boxes in image pixels, (R_i,)
    scores), numpy, best first. ``blob``: the images' ``prepare_image_blob``, made ahead."""
    out, _, im_scales = _forward(model, ims, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, blob=blob)
    rois, probs = out['rois'], out['rpn_roi_probs'].reshape(-1)
    results = []
    for i, inds in enumerate(_split_by_image(rois, len(ims))):
        boxes = (rois[inds, 1:5] / im_scales[i]).cpu().numpy()
        scores = probs[inds].cpu().numpy()
        order = np.argsort(-scores, kind='stable')
        results.append((boxes[order], scores[order]))
    return results


# ---------------------------------------------------------------------------------------------- #
# Class-wise NMS, soft-NMS, box voting and the per-image limit
# ---------------------------------------------------------------------------------------------- #

def box_results_for_images(scores_list, boxes_list):
    """Per image: (scores (n,), boxes (n, 4), cls_boxes) after thresholding, NMS and the limit.

    On the model's device: plain NMS batched over the images; soft-NMS and box voting (CUDA
    models) class by class (``postprocess.box_results_soft_nms_vote``). A CPU model's soft-NMS and
    box voting run Detectron's numpy code (``box_results_with_nms_and_limit``).
    """
    if cfg.TEST.SOFT_NMS.ENABLED or cfg.TEST.BBOX_VOTE.ENABLED:
        if not scores_list or not scores_list[0].is_cuda:
            return [box_results_with_nms_and_limit(s.cpu().numpy(), b.cpu().numpy())
                    for s, b in zip(scores_list, boxes_list)]
        soft = dict(sigma=cfg.TEST.SOFT_NMS.SIGMA, method=cfg.TEST.SOFT_NMS.METHOD) \
            if cfg.TEST.SOFT_NMS.ENABLED else None
        # Detectron calls box_voting without beta (so 1.0): SCORING_METHOD_BETA has no effect
        vote = dict(thresh=cfg.TEST.BBOX_VOTE.VOTE_TH,
                    scoring_method=cfg.TEST.BBOX_VOTE.SCORING_METHOD, beta=1.0) \
            if cfg.TEST.BBOX_VOTE.ENABLED else None
        dets = [postprocess.box_results_soft_nms_vote(
            s, b, score_thresh=cfg.TEST.SCORE_THRESH, nms_thresh=cfg.TEST.NMS,
            detections_per_im=cfg.TEST.DETECTIONS_PER_IM, soft_nms=soft, bbox_vote=vote)
            for s, b in zip(scores_list, boxes_list)]
    else:
        dets = _plain_box_results(scores_list, boxes_list)
    return [_host_box_results(d) for d in dets]


def _plain_box_results(scores_list, boxes_list):
    """The plain path, all images in one call of the model's batched ``postprocess``; the same
    detections as ``box_results_with_nms_and_limit``, class by class, each class in RoI order."""
    im_inds = torch.cat([torch.full((s.shape[0],), i, dtype=torch.int64, device=s.device)
                         for i, s in enumerate(scores_list)])
    return postprocess.box_results_with_nms_and_limit(
        torch.cat(scores_list), torch.cat(boxes_list), im_inds, len(scores_list),
        score_thresh=cfg.TEST.SCORE_THRESH, nms_thresh=cfg.TEST.NMS,
        detections_per_im=cfg.TEST.DETECTIONS_PER_IM)


def _host_box_results(d):
    """A device result dict -> (scores (n,), boxes (n, 4), cls_boxes) numpy, Detectron's layout."""
    num_classes = cfg.MODEL.NUM_CLASSES
    # one copy to the host: x1, y1, x2, y2, score, class (class ids are exact in float32)
    rows = torch.cat((d['boxes'].float(), d['scores'].float()[:, None],
                      d['classes'].float()[:, None]), 1).cpu().numpy()
    boxes, scores = rows[:, :4], rows[:, 4]
    classes = rows[:, 5].astype(np.int64)
    if classes.size and (classes.min() < 1 or classes.max() >= num_classes):
        raise ValueError('box results: class ids must be in 1..%d, got %d..%d'
                         % (num_classes - 1, classes.min(), classes.max()))
    # Detectron's per-class arrays: each class's rows in their order here
    order = np.argsort(classes, kind='stable')
    per_class = np.split(rows[order, :5], np.cumsum(np.bincount(classes, minlength=num_classes)))
    cls_boxes = [[]] + per_class[1:num_classes]
    return scores, boxes, cls_boxes


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
    # expanded by (M + 2) / M in float32, then truncated, as Detectron's expand_boxes
    ref_boxes = mask_results.paste_boxes(ref_boxes, M)
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

def _heatmaps(model, blob_conv, boxes_list, im_scales, on_device=False):
    """(R, K, Hk, Wk) heatmap logits of the detected boxes, split per image (numpy, or float32
    tensors left on the model's device with ``on_device``)."""
    rois = _rois_blob(boxes_list, im_scales, model_device(model))
    with torch.no_grad():
        hms = model.keypoint_net(blob_conv, rois).float()
    if not on_device:
        hms = hms.cpu().numpy()
    return _split_rows(hms, boxes_list)


def im_detect_keypoints(model, im_scales, boxes_list, blob_conv):
    """Keypoint heatmap logits of the detected boxes on features already computed: per image an
    (R_i, K, Hk, Wk) array; on a CUDA model, a float32 tensor left on the GPU for
    ``core.keypoint_results`` to decode there."""
    return _heatmaps(model, blob_conv, boxes_list, im_scales,
                     on_device=model_device(model).type == 'cuda')


def _decode_on_device(heatmaps, boxes_list):
    """Per image the (R_i, 4, K) decoded keypoints when the heatmaps are CUDA tensors -- all the
    images' detections decoded together on the GPU (``core.keypoint_results``) -- else Nones:
    on a CPU, Detectron's per-detection loop (``utils.keypoints``) is faster."""
    if not heatmaps or not all(torch.is_tensor(h) and h.is_cuda for h in heatmaps):
        return [None] * len(boxes_list)
    xy_preds = keypoint_results_on_device.heatmaps_to_keypoints(
        torch.cat(heatmaps), np.concatenate([b.reshape(-1, 4) for b in boxes_list]),
        min_size=cfg.KRCNN.INFERENCE_MIN_SIZE)
    return _split_rows(xy_preds, boxes_list)


def keypoint_results(cls_boxes, pred_heatmaps, ref_boxes, xy_preds=None):
    """Decode (R, K, Hk, Wk) heatmaps on the (R, 4) detections -> cls_keyps (person class only).

    ``xy_preds``: the (R, 4, K) keypoints when already decoded (on the GPU); else the heatmaps
    (numpy or a tensor) are decoded here by Detectron's loop. With ``KRCNN.NMS_OKS`` the poses
    also go through OKS-NMS (threshold 0.3), which drops the matching rows of
    ``cls_boxes[person]`` in place, as Detectron does.
    """
    num_classes = cfg.MODEL.NUM_CLASSES
    cls_keyps = [[] for _ in range(num_classes)]
    person_idx = keypoint_utils.get_person_class_index()
    if xy_preds is None:
        if torch.is_tensor(pred_heatmaps):
            pred_heatmaps = pred_heatmaps.cpu().numpy()
        xy_preds = keypoint_utils.heatmaps_to_keypoints(pred_heatmaps, ref_boxes,
                                                        min_size=cfg.KRCNN.INFERENCE_MIN_SIZE)
    if cfg.KRCNN.NMS_OKS:
        keep = keypoint_utils.nms_oks(xy_preds, ref_boxes, 0.3)
        xy_preds = xy_preds[keep, :, :]
        cls_boxes[person_idx] = cls_boxes[person_idx][keep, :]
    cls_keyps[person_idx] = [xy_preds[i] for i in range(xy_preds.shape[0])]
    return cls_keyps


# Test-time augmentation (core/test_aug.py), imported last: it builds on the functions above.
from pydetectron.core.test_aug import (  # noqa: E402
    aspect_ratio_rel, combine_heatmaps_size_dep, im_detect_bbox_aspect_ratio, im_detect_bbox_aug,
    im_detect_bbox_hflip, im_detect_bbox_scale, im_detect_keypoints_aug, im_detect_mask_aug)
