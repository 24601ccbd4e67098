"""The settings records of the targets and losses: ``from_cfg`` reads each config key into its
field (checked against values written out by hand), and no target or loss module reads the
global config itself."""
import importlib

import pytest

from _params import fast_rcnn_params, keypoint_params, rpn_params
from pydetectron.modeling.losses import GeneralizedRcnnLossParams
from pydetectron.modeling.retinanet_heads import RetinaNetLossParams
from pydetectron.modeling.targets import (
    FastRcnnTargetParams, KeypointTargetParams, RoiTargetParams, RpnTargetParams)
from pydetectron.modeling.targets.retinanet import RetinaNetTargetParams


def test_defaults_are_detectrons(fresh_cfg):
    fresh_cfg.MODEL.NUM_CLASSES = 81
    fresh_cfg.KRCNN.HEATMAP_SIZE = 56
    assert RpnTargetParams.from_cfg() == rpn_params()
    assert FastRcnnTargetParams.from_cfg() == fast_rcnn_params()
    assert KeypointTargetParams.from_cfg() == keypoint_params()
    assert RoiTargetParams.from_cfg() == RoiTargetParams(fast_rcnn_params(), None, None)


def test_every_field_follows_its_key(fresh_cfg):
    c = fresh_cfg
    c.TRAIN.RPN_STRADDLE_THRESH, c.TRAIN.RPN_POSITIVE_OVERLAP = -1, 0.8
    c.TRAIN.RPN_NEGATIVE_OVERLAP, c.TRAIN.RPN_FG_FRACTION = 0.2, 0.4
    c.TRAIN.RPN_BATCH_SIZE_PER_IM = 128
    c.MODEL.FASTER_RCNN, c.TRAIN.CROWD_FILTER_THRESH = False, 0.6
    c.TRAIN.BBOX_THRESH, c.MODEL.BBOX_REG_WEIGHTS = 0.55, (1., 2., 3., 4.)
    c.MODEL.CLS_AGNOSTIC_BBOX_REG, c.TRAIN.FG_THRESH = True, 0.45
    c.TRAIN.BG_THRESH_HI, c.TRAIN.BG_THRESH_LO = 0.35, 0.1
    c.TRAIN.FG_FRACTION, c.TRAIN.BATCH_SIZE_PER_IM, c.MODEL.NUM_CLASSES = 0.3, 32, 5
    c.MODEL.MASK_ON, c.MRCNN.RESOLUTION = True, 14
    c.MODEL.KEYPOINTS_ON, c.KRCNN.HEATMAP_SIZE = True, 28
    c.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH = 7
    c.RPN.CLS_ACTIVATION, c.FPN.RPN_MIN_LEVEL = 'softmax', 3
    c.MRCNN.WEIGHT_LOSS_MASK, c.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS = 2.5, False
    c.KRCNN.LOSS_WEIGHT, c.MODEL.SHARE_RES5 = 4.0, True
    rpn = rpn_params(straddle_thresh=-1, positive_overlap=0.8, negative_overlap=0.2,
                     fg_fraction=0.4, batch_size_per_im=128)
    frcnn = fast_rcnn_params(crowd_filter_thresh=0.6, bbox_thresh=0.55,
                             bbox_reg_weights=(1., 2., 3., 4.), cls_agnostic_bbox_reg=True,
                             fg_thresh=0.45, bg_thresh_hi=0.35, bg_thresh_lo=0.1, fg_fraction=0.3,
                             batch_size_per_im=32, num_classes=5)
    kps = keypoint_params(fg_thresh=0.45, fg_fraction=0.3, batch_size_per_im=32, heatmap_size=28,
                          min_keypoint_count=7)
    assert GeneralizedRcnnLossParams.from_cfg() == GeneralizedRcnnLossParams(
        rpn, 'softmax', 3, 128, RoiTargetParams(frcnn, 14, kps), 2.5, False, 4.0, True)
    # end to end, the proposals are never crowd-filtered (Detectron's add_proposals(..., 0))
    c.MODEL.FASTER_RCNN = True
    assert FastRcnnTargetParams.from_cfg().crowd_filter_thresh == 0
    c.RETINANET.POSITIVE_OVERLAP, c.RETINANET.NEGATIVE_OVERLAP = 0.6, 0.3
    c.TRAIN.MAX_SIZE, c.FPN.COARSEST_STRIDE = 800, 64
    c.RETINANET.BBOX_REG_WEIGHT, c.RETINANET.BBOX_REG_BETA = 2.0, 0.2
    c.RETINANET.LOSS_GAMMA, c.RETINANET.LOSS_ALPHA = 1.5, 0.3
    assert RetinaNetLossParams.from_cfg() == RetinaNetLossParams(
        RetinaNetTargetParams(0.6, 0.3, 800, 64), 2.0, 0.2, 1.5, 0.3)


@pytest.mark.parametrize('module', [
    'pydetectron.modeling.losses', 'pydetectron.modeling.targets',
    'pydetectron.modeling.targets.rpn', 'pydetectron.modeling.targets.fast_rcnn',
    'pydetectron.modeling.targets.mask_rcnn', 'pydetectron.modeling.targets.keypoint_rcnn',
    'pydetectron.modeling.targets.retinanet'])
def test_no_module_reads_the_global_config(module):
    assert 'cfg' not in vars(importlib.import_module(module))
