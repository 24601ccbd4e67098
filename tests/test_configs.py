"""Every YAML file shipped under configs/ loads, validates, and says what its
name says (family, backbone, schedule)."""
import glob
import os
import re

import pytest
import yaml

from pydetectron.core.config import (
    CANONICAL_FUNC_NAMES, FUNC_NAME_KEYS, assert_and_infer_cfg,
    canonical_func_name, cfg, merge_cfg_from_file, reset_cfg)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.yaml'),
                           recursive=True))
IDS = [os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS]

# Images seen in training (MAX_ITER x IMS_PER_BATCH x NUM_GPUS) per schedule:
# Detectron's 1x is 90k iterations of 16 images.
SCHEDULE_IMAGES = {'1x': 1440000, '2x': 2880000, '3x': 4320000,
                   's1x': 2080000, '1.44x': 2080000}


@pytest.fixture(autouse=True)
def _defaults_for_every_test(fresh_cfg):
    """Each test starts from the defaults (conftest's fresh_cfg restores the cfg afterwards)."""
    yield fresh_cfg


def test_all_seed_configs_are_shipped():
    by_dir = {}
    for rel in IDS:
        by_dir.setdefault(os.path.dirname(rel), []).append(rel)
    # Detectron's 30 R-CNN baselines and its R-50-FPN RetinaNet
    assert len(by_dir.get('baselines', [])) == 31
    assert len(by_dir.get('gn_baselines', [])) == 6
    started = by_dir.get('getting_started', [])
    # Detectron's four tutorials, plus the CPU quick-start configs for the shapes datasets
    assert len([p for p in started if 'tutorial_' in p]) == 4
    assert len([p for p in started if 'shapes_' in p]) >= 2
    assert len(CONFIGS) >= 44


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_loads_and_validates(path):
    with open(path) as f:
        raw = yaml.safe_load(f)
    # Shipped configs already use the canonical function names
    for key in FUNC_NAME_KEYS:
        section, leaf = key.split('.')
        value = raw.get(section, {}).get(leaf)
        if value:
            assert canonical_func_name(value) == value, key

    merge_cfg_from_file(path)
    assert_and_infer_cfg(cache_urls=False)
    assert cfg.is_immutable()
    name = os.path.basename(path)
    if 'shapes_' in name:
        _check_quickstart(name)
    else:
        _check_family(name)


def _check_quickstart(name):
    """The CPU quick-start configs: a thin GroupNorm ResNet-FPN trained from scratch on the
    built-in shapes datasets (no ImageNet weights can be fetched there)."""
    m = cfg.MODEL
    assert m.CONV_BODY in CANONICAL_FUNC_NAMES['MODEL.CONV_BODY']
    assert m.CONV_BODY.startswith('FPN.') and cfg.FPN.FPN_ON
    assert not m.LOAD_IMAGENET_PRETRAINED_WEIGHTS
    assert cfg.RESNETS.TRANS_FUNC == 'bottleneck_gn_transformation' and cfg.FPN.USE_GN
    if 'retinanet' in name:
        assert cfg.RETINANET.RETINANET_ON and not m.FASTER_RCNN and m.NUM_CLASSES == 4
        assert (cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL) == (3, 7)
        assert cfg.TRAIN.DATASETS == ('shapes_train',)
        return
    assert cfg.FAST_RCNN.ROI_BOX_HEAD in CANONICAL_FUNC_NAMES['FAST_RCNN.ROI_BOX_HEAD']
    if name.startswith('keypoints_shapes_'):
        assert m.KEYPOINTS_ON and not m.MASK_ON and m.NUM_CLASSES == 2
        assert cfg.TRAIN.DATASETS == ('keypoints_shapes_train',)
        assert cfg.TEST.DATASETS == ('keypoints_shapes_val',)
    else:
        assert m.MASK_ON and not m.KEYPOINTS_ON and m.NUM_CLASSES == 4
        assert cfg.MRCNN.ROI_MASK_HEAD.endswith('_gn')
        assert cfg.TRAIN.DATASETS == ('shapes_train',)
        assert cfg.TEST.DATASETS == ('shapes_val',)


def _check_family(name):
    if name.startswith('retinanet_'):
        _check_retinanet(name)
        return
    m = cfg.MODEL
    assert m.TYPE == 'generalized_rcnn'
    assert m.FASTER_RCNN and cfg.RPN.RPN_ON
    assert not cfg.TEST.PRECOMPUTED_PROPOSALS
    assert m.CONV_BODY in CANONICAL_FUNC_NAMES['MODEL.CONV_BODY']
    assert cfg.FAST_RCNN.ROI_BOX_HEAD in \
        CANONICAL_FUNC_NAMES['FAST_RCNN.ROI_BOX_HEAD']
    assert cfg.FAST_RCNN.ROI_XFORM_METHOD == 'RoIAlign'

    if '-FPN' in name:
        assert cfg.FPN.FPN_ON and cfg.FPN.MULTILEVEL_ROIS
        assert cfg.FPN.MULTILEVEL_RPN
        assert m.CONV_BODY.startswith('FPN.')
        assert cfg.TRAIN.RPN_PRE_NMS_TOP_N == 2000  # per FPN level
    else:
        assert '-C4' in name
        assert not cfg.FPN.FPN_ON
        assert m.CONV_BODY.startswith('ResNet.') and \
            m.CONV_BODY.endswith('_conv4_body')
        assert cfg.FAST_RCNN.ROI_BOX_HEAD == 'ResNet.ResNet_roi_conv5_head'
        assert cfg.RPN.SIZES == (32, 64, 128, 256, 512)

    depth = re.search(r'[RX]-(\d+)', name).group(1)
    assert 'ResNet{}_'.format(depth) in m.CONV_BODY
    if re.search(r'X-\d+-(\d+)x(\d+)d', name):
        groups, width = map(int, re.search(r'X-\d+-(\d+)x(\d+)d', name).groups())
        assert (cfg.RESNETS.NUM_GROUPS, cfg.RESNETS.WIDTH_PER_GROUP) == \
            (groups, width)
        assert cfg.RESNETS.STRIDE_1X1 is False
    else:
        assert cfg.RESNETS.NUM_GROUPS == 1

    if '_mask_' in name:
        assert m.MASK_ON and not m.KEYPOINTS_ON
        assert cfg.MRCNN.ROI_MASK_HEAD in \
            CANONICAL_FUNC_NAMES['MRCNN.ROI_MASK_HEAD']
        assert m.SHARE_RES5 == ('-C4' in name)
        assert m.NUM_CLASSES == 81
    elif '_keypoint_' in name:
        assert m.KEYPOINTS_ON and not m.MASK_ON
        assert cfg.KRCNN.ROI_KEYPOINTS_HEAD in \
            CANONICAL_FUNC_NAMES['KRCNN.ROI_KEYPOINTS_HEAD']
        assert cfg.KRCNN.NUM_KEYPOINTS == 17
        assert cfg.KRCNN.HEATMAP_SIZE == 56
        assert m.NUM_CLASSES == 2
        assert cfg.TRAIN.DATASETS[0].startswith('keypoints_coco')
    else:
        assert '_faster_' in name
        assert not m.MASK_ON and not m.KEYPOINTS_ON
        assert m.NUM_CLASSES == 81

    if '_gn' in name:
        assert cfg.RESNETS.USE_GN and cfg.FPN.USE_GN
        assert cfg.RESNETS.TRANS_FUNC == 'bottleneck_gn_transformation'
        assert cfg.FAST_RCNN.ROI_BOX_HEAD.endswith('_gn_head')
        assert cfg.MRCNN.ROI_MASK_HEAD.endswith('_gn')
    else:
        assert not cfg.RESNETS.USE_GN and not cfg.FPN.USE_GN

    if name.startswith('scratch_'):
        assert not m.LOAD_IMAGENET_PRETRAINED_WEIGHTS
        assert cfg.RESNETS.FREEZE_AT == 0
    else:
        assert m.LOAD_IMAGENET_PRETRAINED_WEIGHTS
        weights = cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS
        assert weights.startswith('data/pretrained_model/')
        backbone = re.search(r'([RX]-\d+(-\d+x\d+d)?)', name).group(1)
        assert os.path.basename(weights).startswith(backbone + '-') or \
            os.path.basename(weights) == backbone + '.pkl'
        assert ('-GN' in weights) == ('_gn' in name)

    _check_schedule(name)


def _check_schedule(name):
    s, t = cfg.SOLVER, cfg.TRAIN
    assert s.LR_POLICY == 'steps_with_decay' and s.STEPS[0] == 0
    assert s.STEPS[-1] < s.MAX_ITER
    images_per_iter = t.IMS_PER_BATCH * cfg.NUM_GPUS
    # Linear scaling rule: 0.02 for 16 images per iteration
    assert s.BASE_LR == pytest.approx(0.02 * images_per_iter / 16)
    if name.startswith('tutorial_'):
        gpus = int(re.match(r'tutorial_(\d)gpu', name).group(1))
        assert cfg.NUM_GPUS == gpus
        assert s.MAX_ITER * gpus == 60000
        assert t.SCALES == (500,) and cfg.TEST.SCALE == 500
        return
    assert cfg.NUM_GPUS == 8
    sched = re.search(r'_(s1x|1\.44x|\dx)(_gn)?\.yaml$', name).group(1)
    assert s.MAX_ITER * images_per_iter == SCHEDULE_IMAGES[sched]
    assert t.MAX_SIZE == 1333 and cfg.TEST.SCALE == 800


def _check_retinanet(name):
    """Detectron's RetinaNet baselines: P3-P7 from an FPN body, 9 anchors, BASE_LR 0.01 for 16
    images per iteration."""
    m, r = cfg.MODEL, cfg.RETINANET
    assert r.RETINANET_ON and not m.FASTER_RCNN and not m.MASK_ON and m.NUM_CLASSES == 81
    assert cfg.FPN.FPN_ON and cfg.FPN.EXTRA_CONV_LEVELS and cfg.FPN.COARSEST_STRIDE == 128
    assert (cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL) == (3, 7)
    assert (r.SCALES_PER_OCTAVE, len(r.ASPECT_RATIOS), r.ANCHOR_SCALE) == (3, 3, 4)
    depth = re.search(r'[RX]-(\d+)', name).group(1)
    assert 'ResNet{}_'.format(depth) in m.CONV_BODY
    assert cfg.SOLVER.BASE_LR == pytest.approx(
        0.01 * cfg.TRAIN.IMS_PER_BATCH * cfg.NUM_GPUS / 16)
