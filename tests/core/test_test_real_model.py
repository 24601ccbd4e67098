"""im_detect_all with real Generalized_RCNN models (random weights, small test scale) on coco_mini
images: batching, the flipped pass, Fast R-CNN proposals, RPN-only proposals."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from pydetectron.core import test as test_mod
from pydetectron.core.config import (assert_and_infer_cfg, cfg, merge_cfg_from_file,
                                     merge_cfg_from_list, reset_cfg)
from pydetectron.utils import boxes as box_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_TEST = ['TEST.SCALE', 160, 'TEST.MAX_SIZE', 256, 'TEST.RPN_PRE_NMS_TOP_N', 300,
              'TEST.RPN_POST_NMS_TOP_N', 40, 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False]


def _build(config, opts):
    from pydetectron.modeling.model_builder import Generalized_RCNN
    reset_cfg()
    merge_cfg_from_file(os.path.join(ROOT, 'configs', 'baselines', config))
    merge_cfg_from_list(SMALL_TEST + opts)
    assert_and_infer_cfg(make_immutable=False)
    torch.manual_seed(0)
    return Generalized_RCNN().eval()


# every test starts from the default cfg and leaves the global cfg as it found it (conftest)
pytestmark = pytest.mark.usefixtures("fresh_cfg")


def _same_size_images(coco_mini, n):
    with open(os.path.join(coco_mini, 'annotations', 'instances_val2017.json')) as f:
        images = json.load(f)['images']
    names = sorted(i['file_name'] for i in images if (i['height'], i['width']) == (480, 640))
    return [cv2.imread(os.path.join(coco_mini, 'images', 'val2017', f)) for f in names[:n]]


def test_batched_equals_per_image_with_masks_and_keypoints(coco_mini):
    model = _build('e2e_keypoint_rcnn_R-50-FPN_1x.yaml',
                   ['MODEL.NUM_CLASSES', 3, 'MODEL.MASK_ON', True,
                    'MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up',
                    'MRCNN.RESOLUTION', 14, 'MRCNN.ROI_XFORM_METHOD', 'RoIAlign',
                    'MRCNN.ROI_XFORM_RESOLUTION', 7, 'KRCNN.NUM_STACKED_CONVS', 2,
                    'TEST.DETECTIONS_PER_IM', 15])
    ims = _same_size_images(coco_mini, 2)
    batched = test_mod.im_detect_all(model, ims)
    singles = [test_mod.im_detect_all(model, im) for im in ims]
    total = 0
    for (bb, sb, kb), (bs, ss, ks) in zip(batched, singles):
        for j in range(1, 3):
            # the same detections; CPU kernels sum in a batch-size dependent order, so boxes and
            # scores agree to float precision, not bit for bit
            assert bb[j].shape == bs[j].shape
            np.testing.assert_allclose(bb[j], bs[j], rtol=1e-3, atol=0.05)
            for a, b in zip(sb[j], ss[j]):
                ma, mb = mask_util.decode(a), mask_util.decode(b)
                assert (ma != mb).sum() <= max(2, 0.01 * mb.sum())
            total += len(bb[j])
        # Detectron's convention: every detection's pose is filed under the person class
        assert len(kb[1]) == sum(len(bb[j]) for j in range(1, 3))
        for a, b in zip(kb[1], ks[1]):
            np.testing.assert_allclose(a[:2], b[:2], atol=0.5)
    assert total > 0


def test_flipped_pass_of_a_symmetric_image(coco_mini):
    """On a mirror-symmetric image the flipped pass sees the same pixels, so its detections,
    mapped back, are exactly the mirror images of the plain pass's."""
    model = _build('e2e_faster_rcnn_R-50-FPN_1x.yaml', ['MODEL.NUM_CLASSES', 3])
    half = _same_size_images(coco_mini, 1)[0][:, :320]
    im = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    assert (im == im[:, ::-1]).all()
    s_i, b_i, _, _ = test_mod.im_detect_bbox(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    s_f, b_f, _ = test_mod.im_detect_bbox_hflip(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                                [None])
    torch.testing.assert_close(s_f[0], s_i[0])
    torch.testing.assert_close(b_f[0], box_utils.flip_boxes(b_i[0], im.shape[1]))
    # and the whole flip-TTA path runs: UNION of both passes, then NMS
    merge_cfg_from_list(['TEST.BBOX_AUG.ENABLED', True, 'TEST.BBOX_AUG.H_FLIP', True])
    cls_boxes, _, _ = test_mod.im_detect_all(model, im)
    plain = test_mod.box_results_with_nms_and_limit(s_i[0].numpy(), b_i[0].numpy())[2]
    assert sum(len(b) for b in cls_boxes[1:]) >= sum(len(b) for b in plain[1:])


def test_fast_rcnn_with_proposals_and_dedup(coco_mini):
    model = _build('e2e_faster_rcnn_R-50-FPN_1x.yaml',
                   ['MODEL.NUM_CLASSES', 3, 'MODEL.FASTER_RCNN', False])
    assert not cfg.RPN.RPN_ON and cfg.TEST.PRECOMPUTED_PROPOSALS
    im = _same_size_images(coco_mini, 1)[0]
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 400, (30, 2))
    props = np.hstack((xy, xy + rng.uniform(20, 200, (30, 2)))).astype(np.float32)
    s1, b1, _, _ = test_mod.im_detect_bbox(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                           [props])
    assert s1[0].shape == (30, 3) and b1[0].shape == (30, 12)
    # duplicated proposals are computed once and their rows repeated
    dup = np.vstack((props, props[:10]))
    s2, b2, _, _ = test_mod.im_detect_bbox(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, [dup])
    torch.testing.assert_close(s2[0][30:], s2[0][:10])
    torch.testing.assert_close(s2[0][:30], s1[0], rtol=1e-4, atol=1e-5)
    cls_boxes, _, _ = test_mod.im_detect_all(model, im, box_proposals=props)
    assert len(cls_boxes) == 3


def test_rpn_only_proposals(coco_mini):
    model = _build('e2e_faster_rcnn_R-50-FPN_1x.yaml', ['MODEL.RPN_ONLY', True,
                                                        'MODEL.FASTER_RCNN', False,
                                                        'MODEL.NUM_CLASSES', 3])
    ims = _same_size_images(coco_mini, 2)
    props = test_mod.im_proposals(model, ims)
    for (boxes, scores), im in zip(props, ims):
        assert 0 < boxes.shape[0] <= cfg.TEST.RPN_POST_NMS_TOP_N and boxes.shape[1] == 4
        assert np.all(np.diff(scores) <= 0)
        # in the original image's pixels: the blob was 160 / 480 of it, padded to 224 wide by
        # FPN's stride (Detectron clips proposals to the padded blob)
        assert boxes[:, 2].max() > 200 and boxes.max() <= 224 * 480 / 160.


@pytest.mark.cuda
def test_cuda_matches_cpu_and_every_test_time_option_runs():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = _build('e2e_mask_rcnn_R-50-FPN_1x.yaml',
                   ['MODEL.NUM_CLASSES', 3, 'MRCNN.RESOLUTION', 14,
                    'MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up',
                    'MRCNN.ROI_XFORM_RESOLUTION', 7])
    rng = np.random.RandomState(0)  # synthetic pictures: GPU machines lack ../shared
    ims = [cv2.GaussianBlur(rng.randint(0, 255, (480, 640, 3)).astype(np.uint8), (0, 0), 5)
           for _ in range(2)]
    cpu = test_mod.im_detect_all(model, ims)
    gpu = test_mod.im_detect_all(model.cuda(), ims)
    # the blob test_net's readers make ahead, page-locked, copied without waiting: same results
    blob = test_mod.prepare_image_blob(ims, pin_memory=True)
    assert blob.data.is_pinned()
    ahead = test_mod.im_detect_all_batch(model, ims, blob=blob)
    for (bg, _, _), (ba, _, _) in zip(gpu, ahead):
        for j in range(1, 3):
            np.testing.assert_allclose(ba[j], bg[j], rtol=1e-6, atol=1e-4)
    for (bc, sc, _), (bg, sg, _) in zip(cpu, gpu):
        for j in range(1, 3):
            strong = bg[j][bg[j][:, 4] > 0.2]
            if len(strong) and len(bc[j]):
                # every confident GPU detection is a CPU detection (float noise aside)
                iou = box_utils.bbox_overlaps(strong[:, :4], bc[j][:, :4])
                assert (iou.max(axis=1) > 0.98).all()
            assert len(sg[j]) == len(bg[j])
    merge_cfg_from_list(['TEST.BBOX_AUG.ENABLED', True, 'TEST.BBOX_AUG.H_FLIP', True,
                         'TEST.BBOX_AUG.SCALES', (200,), 'TEST.MASK_AUG.ENABLED', True,
                         'TEST.MASK_AUG.H_FLIP', True, 'TEST.SOFT_NMS.ENABLED', True,
                         'TEST.BBOX_VOTE.ENABLED', True])
    out = test_mod.im_detect_all(model, ims)
    assert len(out) == 2 and all(len(o[0]) == 3 for o in out)
