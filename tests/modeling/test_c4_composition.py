"""A C4 Mask R-CNN's inference equals a direct composition of the ops on the same weights.

The reference below is written blob by blob with Detectron's names and plain torch /
pydetectron.ops calls, following Detectron's test path for one image (core/test.py im_detect_all:
RPN proposals -> res5 box head -> decode in original coordinates -> class-wise NMS and limit ->
masks of the detections with the shared res5 head). Same weights, so the wiring is proven.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from pydetectron import ops
from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, merge_cfg_from_list
from pydetectron.core.config import reset_cfg
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.utils.boxes import bbox_transform, clip_tiled_boxes
from pydetectron.utils.detectron_weight_helper import detectron_blobs_of, load_detectron_blobs

import detectron_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "baselines", "e2e_mask_rcnn_R-50-C4_1x.yaml")
PRE, POST, THRESH, NMS, LIMIT = 300, 12, 0.01, 0.5, 6


def random_detectron_weights(shapes, seed=0):
    """Blobs by Detectron name: fan-in scaled convs, non-trivial affines, small RPN and box deltas
    (so proposals are distinct boxes), a classifier peaky enough to pass the score threshold."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("_bn_s"):
            v = rng.uniform(0.5, 1.0, shape)
        elif name.endswith("_b"):
            v = rng.normal(0, 0.1, shape)
        elif name == "cls_score_w":
            v = rng.normal(0, 0.003, shape)
        elif name.startswith(("conv_rpn", "rpn_bbox_pred", "bbox_pred")):
            v = rng.normal(0, 0.001, shape)
        elif name.startswith("rpn_cls_logits"):
            v = rng.normal(0, 0.01, shape)
        else:
            fan_in = np.prod(shape[1:]) if not name.startswith("conv5_mask") else shape[0]
            v = rng.uniform(-1, 1, shape) * np.sqrt(3. / fan_in)
        w[name] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    return w


def reference_detect(W, data, im_info, im_size):
    """Detectron's single-image test path, composed by hand from the blobs W."""
    def conv(x, name, stride=1, pad=0):
        return F.conv2d(x, W[name + "_w"], W.get(name + "_b"), stride=stride, padding=pad)

    def affine(x, name):
        return x * W[name + "_s"].view(1, -1, 1, 1) + W[name + "_b"].view(1, -1, 1, 1)

    def block(x, p, stride, project):  # STRIDE_1X1: the stride is on branch2a
        y = F.relu(affine(conv(x, p + "_branch2a", stride), p + "_branch2a_bn"))
        y = F.relu(affine(conv(y, p + "_branch2b", 1, 1), p + "_branch2b_bn"))
        y = affine(conv(y, p + "_branch2c"), p + "_branch2c_bn")
        sc = affine(conv(x, p + "_branch1", stride), p + "_branch1_bn") if project else x
        return F.relu(y + sc)

    def res5(x):
        for i in range(3):
            x = block(x, "res5_%d" % i, 2 if i == 0 else 1, i == 0)
        return x

    x = F.relu(affine(conv(data, "conv1", 2, 3), "res_conv1_bn"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, n, stride in ((2, 3, 1), (3, 4, 2), (4, 6, 2)):
        for i in range(n):
            x = block(x, "res%d_%d" % (stage, i), stride if i == 0 else 1, i == 0)
    c4 = x
    # RPN and proposals (anchors: RPN.SIZES 32..512 at stride 16)
    h = F.relu(conv(c4, "conv_rpn", 1, 1))
    probs = torch.sigmoid(conv(h, "rpn_cls_logits"))
    deltas = conv(h, "rpn_bbox_pred")
    cell = ref.anchors(16, (32, 64, 128, 256, 512), (0.5, 1, 2))
    boxes, _ = ref.proposals_one_image(probs[0].numpy(), deltas[0].numpy(), im_info, cell, 16.,
                                       PRE, POST, 0.7, 0)
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
    # Box head: RoIAlign 14x14 (sampling ratio 0) -> res5 -> 7x7 average -> fc outputs
    feat = res5(ops.roi_align(c4, rois, (14, 14), 1. / 16., 0, aligned=False))
    feat = F.avg_pool2d(feat, 7, stride=1).flatten(1)
    scores = F.softmax(F.linear(feat, W["cls_score_w"], W["cls_score_b"]), dim=1).numpy()
    box_deltas = F.linear(feat, W["bbox_pred_w"], W["bbox_pred_b"]).numpy()
    pred = bbox_transform(rois[:, 1:].numpy() / im_info[2], box_deltas, (10., 10., 5., 5.))
    pred = clip_tiled_boxes(pred, im_size)
    det_boxes, det_scores, det_classes = ref.box_results_with_nms_and_limit(
        scores, pred, THRESH, NMS, LIMIT)
    # Masks: the detections scaled back to the blob, res5 shared with the box head, 2x deconv
    mask_rois = np.hstack((np.zeros((len(det_boxes), 1)), det_boxes.astype(np.float64) * im_info[2]))
    mask_rois = torch.from_numpy(mask_rois.astype(np.float32))
    m = res5(ops.roi_align(c4, mask_rois, (14, 14), 1. / 16., 0, aligned=False))
    m = F.relu(F.conv_transpose2d(m, W["conv5_mask_w"], W["conv5_mask_b"], stride=2))
    m = torch.sigmoid(conv(m, "mask_fcn_logits"))
    masks = m[torch.arange(len(det_classes)), torch.from_numpy(det_classes)]
    return det_boxes, det_scores, det_classes, masks, rois


def test_c4_mask_rcnn_equals_direct_composition():
    reset_cfg()
    try:
        merge_cfg_from_file(CONFIG)
        merge_cfg_from_list(["MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False,
                             "TEST.RPN_PRE_NMS_TOP_N", PRE, "TEST.RPN_POST_NMS_TOP_N", POST,
                             "TEST.SCORE_THRESH", THRESH, "TEST.NMS", NMS,
                             "TEST.DETECTIONS_PER_IM", LIMIT])
        assert_and_infer_cfg()
        model = Generalized_RCNN().eval()
    finally:
        reset_cfg()
    W = random_detectron_weights({b: tuple(t.shape) for _, t, b in detectron_blobs_of(model)})
    report = load_detectron_blobs(model, {k: v.numpy() for k, v in W.items()})
    assert report.unused_blobs == []

    g = torch.Generator().manual_seed(0)
    data = torch.randn(1, 3, 96, 128, generator=g) * 60.
    im_info = np.array([96., 128., 1.5], dtype=np.float32)
    im_size = (64, 85)  # the original image, before the 1.5x resize
    with torch.no_grad():
        det = model.detect(data, torch.from_numpy(im_info)[None], im_sizes=[im_size])[0]
        rois = model(data, torch.from_numpy(im_info)[None])["rois"]
        ref_boxes, ref_scores, ref_classes, ref_masks, ref_rois = reference_detect(
            W, data, im_info, im_size)
    assert 0 < len(ref_classes) <= LIMIT and len(ref_rois) == POST
    torch.testing.assert_close(rois, ref_rois, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(det["classes"], torch.from_numpy(ref_classes))
    torch.testing.assert_close(det["scores"], torch.from_numpy(ref_scores), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det["boxes"], torch.from_numpy(ref_boxes), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(det["masks"], ref_masks, rtol=1e-5, atol=1e-5)
    assert det["masks"].shape == (len(ref_classes), 14, 14)
