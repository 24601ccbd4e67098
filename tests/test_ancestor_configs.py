"""The YAML files users bring, unchanged: Detectron's 87 (../shared/data/detectron_configs) and
Detectron.pytorch's 40 (../shared/data/detectron_pytorch_configs). Each loads, passes
assert_and_infer_cfg with its family's defaults, builds its model and runs one inference on a
small real image on the CPU.

Thin overrides keep it fast: a 64-pixel test scale, fewer proposals and detections, the
test-time augmentation scales shrunk (at most two, small; flips and heuristics kept). Files that describe the same model and
test path (1x and 2x schedules, the two ancestors' copies of one baseline) share one build and
inference: the resolved MODEL / body / head / TEST sections are compared, so a file that differs
in any of them gets its own.
"""
import glob
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from pydetectron.core.config import (assert_and_infer_cfg, cfg, dump_cfg, merge_cfg_from_file,
                                     merge_cfg_from_list, repair_unindented_keys)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, '..', 'shared'))
DEMO_IMAGES = os.path.join(SHARED, 'demo_images')
DETECTRON = os.path.join(SHARED, 'data', 'detectron_configs')
DETECTRON_PYTORCH = os.path.join(SHARED, 'data', 'detectron_pytorch_configs')
PATHS = (sorted(glob.glob(os.path.join(DETECTRON, '**', '*.yaml'), recursive=True)) +
         sorted(glob.glob(os.path.join(DETECTRON_PYTORCH, '**', '*.yaml'), recursive=True)))
IDS = [os.path.relpath(p, os.path.join(SHARED, 'data')) for p in PATHS]

SPEED = ['TEST.SCALE', 64, 'TEST.MAX_SIZE', 96, 'TEST.RPN_PRE_NMS_TOP_N', 200,
         'TEST.RPN_POST_NMS_TOP_N', 20, 'TEST.DETECTIONS_PER_IM', 5]
# the sections that decide the model and what one inference runs
ARCH_SECTIONS = ('MODEL', 'RESNETS', 'FPN', 'RPN', 'FAST_RCNN', 'MRCNN', 'KRCNN', 'GROUP_NORM',
                 'TEST', 'RETINANET', 'BBOX_XFORM_CLIP', 'PIXEL_MEANS', 'DEDUP_BOXES')

_RUNS = {}   # architecture key -> summary of its inference


def test_both_folders_are_complete():
    if not os.path.isdir(DETECTRON):
        pytest.skip('../shared/data/detectron_configs not present')
    assert sum(p.startswith(DETECTRON + os.sep) for p in PATHS) == 87
    assert sum(p.startswith(DETECTRON_PYTORCH + os.sep) for p in PATHS) == 40


def _image():
    path = sorted(glob.glob(os.path.join(DEMO_IMAGES, '*.jpg')))
    if path:
        im = cv2.imread(path[0])
        return cv2.resize(im, (96, int(96 * im.shape[0] / im.shape[1])))
    return (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)


def _shrink_aug():
    for aug in ('BBOX_AUG', 'MASK_AUG', 'KPS_AUG'):
        a = cfg.TEST[aug]
        if a.ENABLED:
            # two small extra scales stand for the file's list (X-152's has eight)
            a.SCALES = tuple(48 + 8 * i for i in range(min(2, len(a.SCALES))))
            a.MAX_SIZE = 128


def _arch_key():
    return yaml.safe_dump({k: yaml.safe_load(dump_cfg({k: cfg[k]})) for k in ARCH_SECTIONS})


def _infer():
    from pydetectron.core.test import im_detect_all, im_proposals
    from pydetectron.modeling.model_builder import Generalized_RCNN
    torch.manual_seed(0)
    model = Generalized_RCNN().eval()
    im = _image()
    with torch.no_grad():
        if cfg.MODEL.RPN_ONLY:
            boxes, scores = im_proposals(model, [im])[0]
            assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
            return {'proposals': len(boxes)}
        proposals = None
        if not cfg.MODEL.FASTER_RCNN:   # Fast R-CNN: precomputed proposals
            h, w = im.shape[:2]
            proposals = np.array([[2, 2, w / 2, h / 2], [w / 4, h / 4, w - 3, h - 3]],
                                 np.float32)
        kp_names = ([str(i) for i in range(cfg.KRCNN.NUM_KEYPOINTS)]
                    if cfg.MODEL.KEYPOINTS_ON else None)
        cls_boxes, cls_segms, cls_keyps = im_detect_all(model, im, box_proposals=proposals,
                                                        keypoint_names=kp_names)
    assert len(cls_boxes) == cfg.MODEL.NUM_CLASSES
    n = sum(len(b) for b in cls_boxes[1:])
    scores = np.sort(np.concatenate([b[:, 4] for b in cls_boxes[1:]]))[::-1]
    limit = cfg.TEST.DETECTIONS_PER_IM
    # Detectron's limit keeps every score >= the limit-th: only ties there may exceed it
    assert n <= limit or scores[limit - 1] == scores[limit]
    if cfg.MODEL.MASK_ON and n:
        assert [len(s) for s in cls_segms[1:]] == [len(b) for b in cls_boxes[1:]]
    if cfg.MODEL.KEYPOINTS_ON and n:
        assert [len(k) for k in cls_keyps[1:]] == [len(b) for b in cls_boxes[1:]]
    return {'detections': n}


@pytest.mark.slow
@pytest.mark.parametrize('path', PATHS, ids=IDS)
def test_config_loads_builds_and_infers(path, fresh_cfg):
    with open(path) as f:
        text = f.read()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        # two of Detectron.pytorch's files have a key at column 0 inside RESNETS (not YAML)
        raw = yaml.safe_load(repair_unindented_keys(text, set(cfg.keys()))[0])
    merge_cfg_from_file(path)

    # each family's defaults
    if path.startswith(DETECTRON_PYTORCH):
        want = raw.get('MODEL', {}).get('LOAD_IMAGENET_PRETRAINED_WEIGHTS', True)
        assert cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is want
        assert cfg.TRAIN.SNAPSHOT_ITERS == raw.get('TRAIN', {}).get('SNAPSHOT_ITERS', 20000)
    else:
        assert cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is False
        assert cfg.TRAIN.WEIGHTS == raw.get('TRAIN', {}).get('WEIGHTS', '')
        assert cfg.TRAIN.SNAPSHOT_ITERS == raw.get('TRAIN', {}).get('SNAPSHOT_ITERS', 80000)

    merge_cfg_from_list(SPEED)
    if cfg.MODEL.NUM_CLASSES == -1:   # Detectron.pytorch takes it from --dataset
        merge_cfg_from_list(['MODEL.NUM_CLASSES', 2 if cfg.MODEL.KEYPOINTS_ON else 81])
    _shrink_aug()
    assert_and_infer_cfg(cache_urls=False)
    if 'FREEZE_AT' in raw.get('TRAIN', {}):
        assert cfg.RESNETS.FREEZE_AT == raw['TRAIN']['FREEZE_AT']

    key = _arch_key()
    if key not in _RUNS:
        _RUNS[key] = _infer()
    assert _RUNS[key]


def test_arch_key_separates_models(fresh_cfg):
    """Two files share an inference only when their model and test sections are equal."""
    if not os.path.isdir(DETECTRON):
        pytest.skip('../shared/data/detectron_configs not present')
    merge_cfg_from_file(os.path.join(DETECTRON, '12_2017_baselines',
                                     'e2e_mask_rcnn_R-50-FPN_1x.yaml'))
    a = _arch_key()
    merge_cfg_from_list(['MRCNN.RESOLUTION', cfg.MRCNN.RESOLUTION + 2])
    assert _arch_key() != a


def test_unindented_key_of_detectron_pytorch_files_is_repaired(fresh_cfg, caplog):
    """e2e_faster_rcnn_X-101-64x4d-FPN_1x.yaml and e2e_mask_rcnn_R-101-FPN_2x_gn.yaml of
    Detectron.pytorch write IMAGENET_PRETRAINED_WEIGHTS at column 0 under RESNETS."""
    import logging
    path = os.path.join(DETECTRON_PYTORCH, 'baselines', 'e2e_faster_rcnn_X-101-64x4d-FPN_1x.yaml')
    if not os.path.isfile(path):
        pytest.skip('../shared/data/detectron_pytorch_configs not present')
    with open(path) as f:
        with pytest.raises(yaml.YAMLError):
            yaml.safe_load(f)
    with caplog.at_level(logging.WARNING, logger='pydetectron.core.config'):
        merge_cfg_from_file(path)
    assert cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS == 'data/pretrained_model/X-101-64x4d.pkl'
    assert cfg.RESNETS.NUM_GROUPS == 64 and cfg.RESNETS.STRIDE_1X1 is False
    assert 'line 19: key IMAGENET_PRETRAINED_WEIGHTS is not indented' in caplog.text


def test_yaml_that_cannot_be_repaired_is_one_line(fresh_cfg, tmp_path):
    from pydetectron.core.config import ConfigValueError
    p = tmp_path / 'bad.yaml'
    p.write_text('MODEL:\n  TYPE: x\n   bad: [1, 2\n')
    with pytest.raises(ConfigValueError) as e:
        merge_cfg_from_file(str(p))
    assert '\n' not in str(e.value) and 'bad.yaml is not valid YAML (line' in str(e.value)
