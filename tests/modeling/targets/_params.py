"""The target settings written out, so the target tests build every part from explicit
parameters and never from the global config.

The defaults are Detectron's config defaults (``core/config.py``: TRAIN.RPN_*, TRAIN.*,
MODEL.BBOX_REG_WEIGHTS, KRCNN.*), with the COCO class count and Detectron's keypoint heatmap
size where the config leaves them to the model's YAML; a test overrides what it needs.
``test_params_from_cfg`` checks that ``from_cfg()`` reads the config keys into the same fields.
"""
from pydetectron.modeling.targets import (
    FastRcnnTargetParams, KeypointTargetParams, RpnTargetParams)


def rpn_params(**overrides):
    return RpnTargetParams(straddle_thresh=0, positive_overlap=0.7, negative_overlap=0.3,
                           fg_fraction=0.5, batch_size_per_im=256)._replace(**overrides)


def fast_rcnn_params(**overrides):
    return FastRcnnTargetParams(
        crowd_filter_thresh=0.7, bbox_thresh=0.5, bbox_reg_weights=(10., 10., 5., 5.),
        cls_agnostic_bbox_reg=False, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.0,
        fg_fraction=0.25, batch_size_per_im=64, num_classes=81)._replace(**overrides)


def keypoint_params(**overrides):
    return KeypointTargetParams(fg_thresh=0.5, fg_fraction=0.25, batch_size_per_im=64,
                                heatmap_size=56, min_keypoint_count=20)._replace(**overrides)
