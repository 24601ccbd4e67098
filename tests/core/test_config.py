"""Tests of pydetectron.core.config: defaults, merging, coercion, errors,
assert_and_infer_cfg, immutability, Detectron compatibility."""
import copy
import math
import os
import pickle

import numpy as np
import pytest

from pydetectron.core import config as config_module
from pydetectron.core.config import (
    CANONICAL_FUNC_NAMES, ConfigKeyError, ConfigTypeError, ConfigValueError,
    assert_and_infer_cfg, canonical_func_name, cfg, dump_cfg, get_output_dir,
    load_cfg, merge_cfg_from_cfg, merge_cfg_from_file, merge_cfg_from_list,
    reset_cfg, resolve_imagenet_pretrained_weights)
from pydetectron.utils.collections import AttrDict


@pytest.fixture(autouse=True)
def _defaults_for_every_test(fresh_cfg):
    """Each test starts from the defaults (conftest's fresh_cfg restores the cfg afterwards)."""
    yield fresh_cfg


def write_yaml(tmp_path, text, name='cfg.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# Every key of Detectron's detectron/core/config.py, by section.
DETECTRON_KEYS = {
    'TRAIN': '''WEIGHTS DATASETS SCALES MAX_SIZE IMS_PER_BATCH BATCH_SIZE_PER_IM
        FG_FRACTION FG_THRESH BG_THRESH_HI BG_THRESH_LO USE_FLIPPED BBOX_THRESH
        SNAPSHOT_ITERS PROPOSAL_FILES ASPECT_GROUPING RPN_POSITIVE_OVERLAP
        RPN_NEGATIVE_OVERLAP RPN_FG_FRACTION RPN_BATCH_SIZE_PER_IM
        RPN_NMS_THRESH RPN_PRE_NMS_TOP_N RPN_POST_NMS_TOP_N
        RPN_STRADDLE_THRESH RPN_MIN_SIZE CROWD_FILTER_THRESH GT_MIN_AREA
        FREEZE_CONV_BODY AUTO_RESUME''',
    'DATA_LOADER': 'NUM_THREADS MINIBATCH_QUEUE_SIZE BLOBS_QUEUE_CAPACITY',
    'TEST': '''WEIGHTS DATASETS SCALE MAX_SIZE NMS BBOX_REG PROPOSAL_FILES
        PROPOSAL_LIMIT RPN_NMS_THRESH RPN_PRE_NMS_TOP_N RPN_POST_NMS_TOP_N
        RPN_MIN_SIZE DETECTIONS_PER_IM SCORE_THRESH COMPETITION_MODE
        FORCE_JSON_DATASET_EVAL PRECOMPUTED_PROPOSALS''',
    'TEST.BBOX_AUG': '''ENABLED SCORE_HEUR COORD_HEUR H_FLIP SCALES MAX_SIZE
        SCALE_H_FLIP SCALE_SIZE_DEP AREA_TH_LO AREA_TH_HI ASPECT_RATIOS
        ASPECT_RATIO_H_FLIP''',
    'TEST.MASK_AUG': '''ENABLED HEUR H_FLIP SCALES MAX_SIZE SCALE_H_FLIP
        SCALE_SIZE_DEP AREA_TH ASPECT_RATIOS ASPECT_RATIO_H_FLIP''',
    'TEST.KPS_AUG': '''ENABLED HEUR H_FLIP SCALES MAX_SIZE SCALE_H_FLIP
        SCALE_SIZE_DEP AREA_TH ASPECT_RATIOS ASPECT_RATIO_H_FLIP''',
    'TEST.SOFT_NMS': 'ENABLED METHOD SIGMA',
    'TEST.BBOX_VOTE': 'ENABLED VOTE_TH SCORING_METHOD SCORING_METHOD_BETA',
    'MODEL': '''TYPE CONV_BODY NUM_CLASSES CLS_AGNOSTIC_BBOX_REG
        BBOX_REG_WEIGHTS FASTER_RCNN MASK_ON KEYPOINTS_ON RPN_ONLY
        EXECUTION_TYPE''',
    'RETINANET': '''RETINANET_ON ASPECT_RATIOS SCALES_PER_OCTAVE ANCHOR_SCALE
        NUM_CONVS BBOX_REG_WEIGHT BBOX_REG_BETA PRE_NMS_TOP_N POSITIVE_OVERLAP
        NEGATIVE_OVERLAP LOSS_ALPHA LOSS_GAMMA PRIOR_PROB SHARE_CLS_BBOX_TOWER
        CLASS_SPECIFIC_BBOX SOFTMAX INFERENCE_TH''',
    'SOLVER': '''BASE_LR LR_POLICY GAMMA STEP_SIZE STEPS LRS MAX_ITER MOMENTUM
        WEIGHT_DECAY WEIGHT_DECAY_GN WARM_UP_ITERS WARM_UP_FACTOR
        WARM_UP_METHOD SCALE_MOMENTUM SCALE_MOMENTUM_THRESHOLD
        LOG_LR_CHANGE_THRESHOLD''',
    'FAST_RCNN': '''ROI_BOX_HEAD MLP_HEAD_DIM CONV_HEAD_DIM NUM_STACKED_CONVS
        ROI_XFORM_METHOD ROI_XFORM_SAMPLING_RATIO ROI_XFORM_RESOLUTION''',
    'RPN': 'RPN_ON SIZES STRIDE ASPECT_RATIOS',
    'FPN': '''FPN_ON DIM ZERO_INIT_LATERAL COARSEST_STRIDE MULTILEVEL_ROIS
        ROI_CANONICAL_SCALE ROI_CANONICAL_LEVEL ROI_MAX_LEVEL ROI_MIN_LEVEL
        MULTILEVEL_RPN RPN_MAX_LEVEL RPN_MIN_LEVEL RPN_ASPECT_RATIOS
        RPN_ANCHOR_START_SIZE EXTRA_CONV_LEVELS USE_GN''',
    'MRCNN': '''ROI_MASK_HEAD RESOLUTION ROI_XFORM_METHOD ROI_XFORM_RESOLUTION
        ROI_XFORM_SAMPLING_RATIO DIM_REDUCED DILATION UPSAMPLE_RATIO
        USE_FC_OUTPUT CONV_INIT CLS_SPECIFIC_MASK WEIGHT_LOSS_MASK
        THRESH_BINARIZE''',
    'KRCNN': '''ROI_KEYPOINTS_HEAD HEATMAP_SIZE UP_SCALE USE_DECONV DECONV_DIM
        USE_DECONV_OUTPUT DILATION DECONV_KERNEL NUM_KEYPOINTS
        NUM_STACKED_CONVS CONV_HEAD_DIM CONV_HEAD_KERNEL CONV_INIT NMS_OKS
        KEYPOINT_CONFIDENCE ROI_XFORM_METHOD ROI_XFORM_RESOLUTION
        ROI_XFORM_SAMPLING_RATIO MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH
        INFERENCE_MIN_SIZE LOSS_WEIGHT NORMALIZE_BY_VISIBLE_KEYPOINTS''',
    'RFCN': 'PS_GRID_SIZE',
    'RESNETS': '''NUM_GROUPS WIDTH_PER_GROUP STRIDE_1X1 TRANS_FUNC STEM_FUNC
        SHORTCUT_FUNC RES5_DILATION''',
    'GROUP_NORM': 'DIM_PER_GP NUM_GROUPS EPSILON',
    'CLUSTER': 'ON_CLUSTER',
    '': '''NUM_GPUS USE_NCCL DEDUP_BOXES BBOX_XFORM_CLIP PIXEL_MEANS RNG_SEED
        EPS ROOT_DIR OUTPUT_DIR MATLAB MEMONGER MEMONGER_SHARE_ACTIVATIONS VIS
        VIS_TH EXPECTED_RESULTS EXPECTED_RESULTS_RTOL EXPECTED_RESULTS_ATOL
        EXPECTED_RESULTS_EMAIL DOWNLOAD_CACHE''',
}

# Keys Detectron.pytorch added, plus the ones this project's tools need.
EXTRA_KEYS = '''RESNETS.IMAGENET_PRETRAINED_WEIGHTS RESNETS.FREEZE_AT RESNETS.USE_GN
    MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS MODEL.SHARE_RES5
    MODEL.UNSUPERVISED_POSE TRAIN.ASPECT_CROPPING TRAIN.ASPECT_HI
    TRAIN.ASPECT_LO RPN.OUT_DIM_AS_IN_DIM RPN.OUT_DIM RPN.CLS_ACTIVATION
    SOLVER.TYPE SOLVER.BIAS_DOUBLE_LR SOLVER.BIAS_WEIGHT_DECAY
    MRCNN.MEMORY_EFFICIENT_LOSS FPN.RPN_COLLECT_SCALE POOLING_MODE
    POOLING_SIZE CROP_RESIZE_WITH_MAX_POOL CUDA DEBUG DATA_DIR CACHE_DIR
    VGG16.IMAGENET_PRETRAINED_WEIGHTS'''.split()


def _has_key(full_key):
    d = cfg
    for part in full_key.split('.'):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


# ---------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------

def test_every_detectron_key_exists():
    missing = [(section + '.' + k).lstrip('.')
               for section, keys in DETECTRON_KEYS.items()
               for k in keys.split()
               if not _has_key((section + '.' + k).lstrip('.'))]
    assert missing == []


def test_detectron_pytorch_extra_keys_exist():
    assert [k for k in EXTRA_KEYS if not _has_key(k)] == []


def test_detectron_default_values():
    assert cfg.TRAIN.SCALES == (600,)
    assert cfg.TRAIN.MAX_SIZE == 1000
    assert cfg.TRAIN.BATCH_SIZE_PER_IM == 64
    assert cfg.TRAIN.RPN_PRE_NMS_TOP_N == 12000
    assert cfg.TRAIN.RPN_POST_NMS_TOP_N == 2000
    assert cfg.TEST.NMS == 0.3
    assert cfg.TEST.SCORE_THRESH == 0.05
    assert cfg.MODEL.BBOX_REG_WEIGHTS == (10., 10., 5., 5.)
    assert cfg.MODEL.NUM_CLASSES == -1
    assert cfg.FAST_RCNN.ROI_XFORM_METHOD == 'RoIPoolF'
    assert cfg.FAST_RCNN.ROI_XFORM_RESOLUTION == 14
    assert cfg.MRCNN.ROI_XFORM_RESOLUTION == 7
    assert cfg.RPN.SIZES == (64, 128, 256, 512)
    assert cfg.FPN.RPN_ANCHOR_START_SIZE == 32
    assert cfg.SOLVER.WARM_UP_FACTOR == pytest.approx(1.0 / 3.0)
    assert cfg.SOLVER.WARM_UP_METHOD == 'linear'
    assert cfg.SOLVER.STEPS == [] and isinstance(cfg.SOLVER.STEPS, list)
    assert cfg.RETINANET.BBOX_REG_BETA == 0.11
    assert cfg.RESNETS.STRIDE_1X1 is True
    assert cfg.RESNETS.FREEZE_AT == 2
    assert cfg.GROUP_NORM.NUM_GROUPS == 32
    assert cfg.RNG_SEED == 3
    assert cfg.EPS == 1e-14
    assert cfg.DEDUP_BOXES == 1. / 16.
    assert cfg.BBOX_XFORM_CLIP == pytest.approx(math.log(1000. / 16.))
    assert cfg.PIXEL_MEANS.shape == (1, 1, 3)
    np.testing.assert_array_equal(cfg.PIXEL_MEANS.ravel(),
                                  [102.9801, 115.9465, 122.7717])
    assert cfg.RPN.CLS_ACTIVATION == 'sigmoid'
    assert cfg.SOLVER.BIAS_DOUBLE_LR is True
    assert cfg.SOLVER.BIAS_WEIGHT_DECAY is False


# ---------------------------------------------------------------------------
# AttrDict
# ---------------------------------------------------------------------------

def test_attrdict_attribute_and_item_access():
    d = AttrDict(A=1)
    d.B = AttrDict(C=2)
    assert d['B']['C'] == 2 and d.B.C == 2 and d.A == 1
    with pytest.raises(AttributeError, match='MISSING'):
        d.B.MISSING
    d.immutable(True)  # frozen dicts know their path for messages
    with pytest.raises(AttributeError, match="'B.MISSING'"):
        d.B.MISSING


def test_attrdict_copy_and_pickle_keep_frozen_state():
    d = AttrDict(A=AttrDict(B=(1, 2)))
    d.immutable(True)
    for clone in (copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        assert clone == d
        assert clone.is_immutable() and clone.A.is_immutable()
        with pytest.raises(AttributeError, match='A.B'):
            clone.A.B = 3
    clone.immutable(False)
    clone.A.B = 3
    assert d.A.B == (1, 2)


# ---------------------------------------------------------------------------
# Merging and type coercion
# ---------------------------------------------------------------------------

def test_merge_from_file_coerces_types(tmp_path):
    path = write_yaml(tmp_path, '''
TRAIN:
  SCALES: [500, 600]        # list -> tuple (default is a tuple)
  MAX_SIZE: 833
RPN:
  SIZES: (32, 64)           # a Python literal string -> tuple
SOLVER:
  BASE_LR: 1                # int accepted for a float key
  STEPS: (0, 100, 200)      # tuple -> list (default is a list)
  WARM_UP_FACTOR: 1e-3      # YAML reads this as a string; literal_eval
OUTPUT_DIR: 2018            # number accepted for a string key
PIXEL_MEANS: [1, 2, 3]      # reshaped to the default (1, 1, 3)
''')
    merge_cfg_from_file(path)
    assert cfg.TRAIN.SCALES == (500, 600) and isinstance(cfg.TRAIN.SCALES,
                                                         tuple)
    assert cfg.TRAIN.MAX_SIZE == 833
    assert cfg.RPN.SIZES == (32, 64)
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert cfg.SOLVER.STEPS == [0, 100, 200]
    assert isinstance(cfg.SOLVER.STEPS, list)
    assert cfg.SOLVER.WARM_UP_FACTOR == 1e-3
    assert cfg.OUTPUT_DIR == '2018'
    assert cfg.PIXEL_MEANS.shape == (1, 1, 3)
    np.testing.assert_array_equal(cfg.PIXEL_MEANS.ravel(), [1., 2., 3.])
    # untouched keys keep their defaults
    assert cfg.TEST.SCALE == 600


def test_merge_from_list_literal_eval():
    merge_cfg_from_list([
        'TEST.NMS', '0.5',
        'TRAIN.SCALES', '(500,)',
        'MODEL.MASK_ON', 'True',
        'NUM_GPUS', '2',
        'SOLVER.STEPS', '[0, 10]',
        'TEST.DATASETS', "('coco_2017_val', 'coco_2017_test')",
        'OUTPUT_DIR', '/tmp/out dir',       # not a literal: stays a string
        'MODEL.TYPE', 'generalized_rcnn',
        'TRAIN.DATASETS', 'coco_2017_train',  # bare string -> one-tuple
    ])
    assert cfg.TEST.NMS == 0.5
    assert cfg.TRAIN.SCALES == (500,)
    assert cfg.MODEL.MASK_ON is True
    assert cfg.NUM_GPUS == 2
    assert cfg.SOLVER.STEPS == [0, 10]
    assert cfg.TEST.DATASETS == ('coco_2017_val', 'coco_2017_test')
    assert cfg.OUTPUT_DIR == '/tmp/out dir'
    assert cfg.MODEL.TYPE == 'generalized_rcnn'
    assert cfg.TRAIN.DATASETS == ('coco_2017_train',)


def test_merge_from_list_odd_length_raises():
    with pytest.raises(ConfigValueError, match='pairs'):
        merge_cfg_from_list(['TEST.NMS', '0.5', 'TRAIN.SCALES'])


def test_merge_from_cfg_nested():
    other = AttrDict(TRAIN=AttrDict(SCALES=[800], IMS_PER_BATCH=1),
                     FPN=dict(FPN_ON=True))
    merge_cfg_from_cfg(other)
    assert cfg.TRAIN.SCALES == (800,)
    assert cfg.TRAIN.IMS_PER_BATCH == 1
    assert cfg.FPN.FPN_ON is True
    assert isinstance(cfg.FPN, AttrDict)


def test_empty_yaml_file_changes_nothing(tmp_path):
    merge_cfg_from_file(write_yaml(tmp_path, '# nothing\n'))
    assert cfg.TRAIN.SCALES == (600,)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write_yaml(tmp_path, 'TRAIN:\n  SCALES: [1, 2\n', name='bad.yaml')
    with pytest.raises(ConfigValueError, match='bad.yaml'):
        merge_cfg_from_file(path)


# ---------------------------------------------------------------------------
# Errors: unknown keys and wrong types
# ---------------------------------------------------------------------------

def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write_yaml(tmp_path, 'TRAIN:\n  SCALE: (800,)\n', name='typo.yaml')
    with pytest.raises(ConfigKeyError) as e:
        merge_cfg_from_file(path)
    msg = str(e.value)
    assert 'TRAIN.SCALE ' in msg
    assert path in msg
    assert 'did you mean TRAIN.SCALES' in msg


def test_unknown_key_in_wrong_section_suggests_right_section(tmp_path):
    path = write_yaml(tmp_path, 'MODEL:\n  MULTILEVEL_RPN: True\n')
    with pytest.raises(ConfigKeyError, match='did you mean FPN.MULTILEVEL_RPN'):
        merge_cfg_from_file(path)


def test_unknown_top_level_section(tmp_path):
    path = write_yaml(tmp_path, 'SOLVR:\n  BASE_LR: 0.1\n')
    with pytest.raises(ConfigKeyError) as e:
        merge_cfg_from_file(path)
    assert 'SOLVR' in str(e.value) and 'SOLVER' in str(e.value)


def test_unknown_key_from_list_names_the_command_line():
    with pytest.raises(ConfigKeyError) as e:
        merge_cfg_from_list(['MODEL.CONV_BDY', 'x'])
    msg = str(e.value)
    assert 'MODEL.CONV_BDY' in msg and '--set' in msg
    assert 'MODEL.CONV_BODY' in msg
    with pytest.raises(ConfigKeyError, match='TRAIN.SCALES.X'):
        merge_cfg_from_list(['TRAIN.SCALES.X', '1'])


@pytest.mark.parametrize('key,value,expected,got', [
    ('TRAIN.SCALES', 'abc', 'tuple', 'str'),
    ('NUM_GPUS', True, 'int', 'bool'),          # bool is not taken for an int
    ('TRAIN.MAX_SIZE', 1000.5, 'int', 'float'),  # float is not taken for an int
    ('MODEL.MASK_ON', 1, 'bool', 'int'),
    ('TRAIN', 3, 'AttrDict', 'int'),
    ('MODEL.TYPE', None, 'str', 'NoneType'),
])
def test_wrong_type_names_key_and_both_types(key, value, expected, got):
    with pytest.raises(ConfigTypeError) as e:
        merge_cfg_from_list([key, value])
    msg = str(e.value)
    assert key in msg and expected in msg and got in msg


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = write_yaml(tmp_path, 'TEST:\n  SCALE: large\n', name='t.yaml')
    with pytest.raises(ValueError) as e:  # ConfigTypeError is a ValueError
        merge_cfg_from_file(path)
    assert 'TEST.SCALE' in str(e.value) and 't.yaml' in str(e.value)


def test_deprecated_key_is_ignored(tmp_path):
    merge_cfg_from_file(write_yaml(tmp_path, 'USE_GPU_NMS: True\n'
                                   'TRAIN:\n  BBOX_NORMALIZE_TARGETS: True\n'))
    assert 'USE_GPU_NMS' not in cfg


def test_renamed_key_is_carried_over(tmp_path):
    merge_cfg_from_file(write_yaml(tmp_path, '''
TRAIN:
  DATASET: coco_2014_train:coco_2014_valminusminival
TEST:
  SCALES: (800,)
MODEL:
  ROI_HEAD: head_builder.add_roi_2mlp_head
'''))
    assert cfg.TRAIN.DATASETS == ('coco_2014_train',
                                  'coco_2014_valminusminival')
    assert cfg.TEST.SCALE == 800
    assert cfg.FAST_RCNN.ROI_BOX_HEAD == 'fast_rcnn_heads.roi_2mlp_head'


def test_renamed_key_that_cannot_be_converted_gives_a_hint():
    with pytest.raises(ConfigKeyError) as e:
        merge_cfg_from_list(['TEST.SCALES', '(600, 800)'])
    msg = str(e.value)
    assert 'renamed to TEST.SCALE' in msg and 'BBOX_AUG.SCALES' in msg


# ---------------------------------------------------------------------------
# Function names (Detectron's add_ / head_builder forms)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('name,canonical', [
    ('FPN.add_fpn_ResNet50_conv5_body', 'FPN.fpn_ResNet50_conv5_body'),
    ('FPN.fpn_ResNet50_conv5_body', 'FPN.fpn_ResNet50_conv5_body'),
    ('FPN.add_fpn_ResNet101_conv5_P2only_body',
     'FPN.fpn_ResNet101_conv5_P2only_body'),
    ('ResNet.add_ResNet50_conv4_body', 'ResNet.ResNet50_conv4_body'),
    ('ResNet.add_ResNet_roi_conv5_head', 'ResNet.ResNet_roi_conv5_head'),
    ('fast_rcnn_heads.add_roi_2mlp_head', 'fast_rcnn_heads.roi_2mlp_head'),
    ('head_builder.add_roi_2mlp_head', 'fast_rcnn_heads.roi_2mlp_head'),
    ('head_builder.add_roi_Xconv1fc_gn_head',
     'fast_rcnn_heads.roi_Xconv1fc_gn_head'),
    ('keypoint_rcnn_heads.add_roi_pose_head_v1convX',
     'keypoint_rcnn_heads.roi_pose_head_v1convX'),
    ('mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs',
     'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs'),
    ('mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0upshare',
     'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare'),
    ('detectron.modeling.FPN.add_fpn_ResNet50_conv5_body',
     'FPN.fpn_ResNet50_conv5_body'),
    ('  FPN.add_fpn_ResNet50_conv5_body ', 'FPN.fpn_ResNet50_conv5_body'),
    ('', ''),
])
def test_canonical_func_name(name, canonical):
    assert canonical_func_name(name) == canonical


def test_function_keys_are_stored_canonical():
    merge_cfg_from_list([
        'MODEL.CONV_BODY', 'FPN.add_fpn_ResNet101_conv5_body',
        'FAST_RCNN.ROI_BOX_HEAD', 'head_builder.add_roi_2mlp_head',
        'MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up',
        'KRCNN.ROI_KEYPOINTS_HEAD',
        'keypoint_rcnn_heads.add_roi_pose_head_v1convX',
    ])
    assert cfg.MODEL.CONV_BODY == 'FPN.fpn_ResNet101_conv5_body'
    assert cfg.FAST_RCNN.ROI_BOX_HEAD == 'fast_rcnn_heads.roi_2mlp_head'
    assert cfg.MRCNN.ROI_MASK_HEAD == 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up'
    assert cfg.KRCNN.ROI_KEYPOINTS_HEAD == \
        'keypoint_rcnn_heads.roi_pose_head_v1convX'
    for key, names in CANONICAL_FUNC_NAMES.items():
        assert all(canonical_func_name(n) == n for n in names), key


DETECTRON_YAML = '''
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 81
  FASTER_RCNN: True
  MASK_ON: True
NUM_GPUS: 8
SOLVER:
  WEIGHT_DECAY: 0.0001
  LR_POLICY: steps_with_decay
  BASE_LR: 0.02
  GAMMA: 0.1
  MAX_ITER: 90000
  STEPS: [0, 60000, 80000]
FPN:
  FPN_ON: True
  MULTILEVEL_ROIS: True
  MULTILEVEL_RPN: True
FAST_RCNN:
  ROI_BOX_HEAD: head_builder.add_roi_2mlp_head
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
MRCNN:
  ROI_MASK_HEAD: mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs
  RESOLUTION: 28  # (output mask resolution) default 14
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 14  # default 7
  ROI_XFORM_SAMPLING_RATIO: 2  # default 0
  DILATION: 1  # default 2
  CONV_INIT: MSRAFill  # default GaussianFill
TRAIN:
  WEIGHTS: https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl
  DATASETS: ('coco_2014_train', 'coco_2014_valminusminival')
  SCALES: (800,)
  MAX_SIZE: 1333
  BATCH_SIZE_PER_IM: 512
  RPN_PRE_NMS_TOP_N: 2000  # Per FPN level
TEST:
  DATASETS: ('coco_2014_minival',)
  SCALES: (800,)
  MAX_SIZE: 1333
  NMS: 0.5
  RPN_PRE_NMS_TOP_N: 1000  # Per FPN level
  RPN_POST_NMS_TOP_N: 1000
OUTPUT_DIR: .
'''


def test_detectron_form_yaml_merges_and_validates(tmp_path):
    merge_cfg_from_file(write_yaml(tmp_path, DETECTRON_YAML))
    assert_and_infer_cfg(cache_urls=False)
    assert cfg.MODEL.CONV_BODY == 'FPN.fpn_ResNet50_conv5_body'
    assert cfg.FAST_RCNN.ROI_BOX_HEAD == 'fast_rcnn_heads.roi_2mlp_head'
    assert cfg.MODEL.NUM_CLASSES == 81
    assert cfg.TRAIN.WEIGHTS.endswith('/MSRA/R-50.pkl')
    assert cfg.TRAIN.DATASETS == ('coco_2014_train',
                                  'coco_2014_valminusminival')
    assert cfg.TEST.DATASETS == ('coco_2014_minival',)
    assert cfg.TEST.SCALE == 800
    assert cfg.OUTPUT_DIR == '.'
    assert cfg.RPN.RPN_ON is True
    assert cfg.is_immutable()


# ---------------------------------------------------------------------------
# assert_and_infer_cfg: inference, validation, immutability
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('rpn_only,faster,rpn_on', [
    (False, False, False), (True, False, True), (False, True, True),
    (True, True, True)])
def test_rpn_on_is_inferred(rpn_only, faster, rpn_on):
    merge_cfg_from_list(['MODEL.RPN_ONLY', rpn_only,
                         'MODEL.FASTER_RCNN', faster])
    assert_and_infer_cfg()
    assert cfg.RPN.RPN_ON is rpn_on
    assert cfg.TEST.PRECOMPUTED_PROPOSALS is (not rpn_on)


def test_retinanet_needs_no_precomputed_proposals():
    merge_cfg_from_list(['RETINANET.RETINANET_ON', True])
    assert_and_infer_cfg()
    assert cfg.TEST.PRECOMPUTED_PROPOSALS is False
    assert cfg.RPN.RPN_ON is False


def test_share_res5_is_inferred_for_v0upshare():
    merge_cfg_from_list([
        'MODEL.FASTER_RCNN', True, 'MODEL.MASK_ON', True,
        'MODEL.CONV_BODY', 'ResNet.add_ResNet50_conv4_body',
        'FAST_RCNN.ROI_BOX_HEAD', 'ResNet.add_ResNet_roi_conv5_head',
        'MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare'])
    assert_and_infer_cfg()
    assert cfg.MODEL.SHARE_RES5 is True


def test_function_names_set_by_attribute_are_canonicalised():
    cfg.FAST_RCNN.ROI_BOX_HEAD = 'head_builder.add_roi_2mlp_head'
    assert_and_infer_cfg()
    assert cfg.FAST_RCNN.ROI_BOX_HEAD == 'fast_rcnn_heads.roi_2mlp_head'


def test_test_ims_per_batch_default():
    # pydetectron addition read by the test engine
    assert cfg.TEST.IMS_PER_BATCH == 1


def test_immutable_after_assert_and_infer_cfg():
    assert_and_infer_cfg()
    with pytest.raises(AttributeError, match="'NUM_GPUS'"):
        cfg.NUM_GPUS = 2
    with pytest.raises(AttributeError, match="'TRAIN.SCALES'"):
        cfg.TRAIN.SCALES = (1,)
    with pytest.raises(AttributeError, match="'TEST.BBOX_AUG.ENABLED'"):
        cfg.TEST.BBOX_AUG.ENABLED = True
    with pytest.raises(AttributeError, match="'MODEL.TYPE'"):
        cfg['MODEL']['TYPE'] = 'x'
    with pytest.raises(AttributeError):
        cfg.MODEL.NEW_KEY = 1
    with pytest.raises(AttributeError):
        del cfg.TRAIN
    with pytest.raises(AttributeError):
        cfg.SOLVER.update(BASE_LR=1.0)
    with pytest.raises(AttributeError):
        merge_cfg_from_list(['TEST.NMS', '0.4'])
    assert cfg.TRAIN.SCALES == (600,) and cfg.TEST.NMS == 0.3


def test_make_immutable_false_leaves_cfg_mutable():
    assert_and_infer_cfg(make_immutable=False)
    cfg.TRAIN.SCALES = (1,)
    assert cfg.TRAIN.SCALES == (1,)


def _problems_of(settings):
    merge_cfg_from_list(settings)
    with pytest.raises(ConfigValueError) as e:
        assert_and_infer_cfg()
    assert not cfg.is_immutable()
    return str(e.value)


@pytest.mark.parametrize('settings,fragment', [
    (['MODEL.MASK_ON', True], 'MRCNN.ROI_MASK_HEAD'),
    (['MODEL.KEYPOINTS_ON', True, 'KRCNN.ROI_KEYPOINTS_HEAD',
      'keypoint_rcnn_heads.roi_pose_head_v1convX'], 'KRCNN.NUM_KEYPOINTS'),
    (['MODEL.CONV_BODY', 'FPN.fpn_ResNet50_conv5_body'], 'FPN.FPN_ON'),
    (['FPN.MULTILEVEL_ROIS', True], 'FPN.FPN_ON'),
    (['FAST_RCNN.ROI_XFORM_METHOD', 'RoIWarp'], "'RoIWarp'"),
    (['SOLVER.LR_POLICY', 'poly'], 'SOLVER.LR_POLICY'),
    (['SOLVER.LR_POLICY', 'steps_with_decay', 'SOLVER.STEPS', '[60000]'],
     'start with 0'),
    (['SOLVER.LR_POLICY', 'steps_with_lrs', 'SOLVER.STEPS', '[0, 10]',
      'SOLVER.LRS', '[0.1]'], 'SOLVER.LRS'),
    (['SOLVER.LR_POLICY', 'steps_with_relative_lrs', 'SOLVER.STEPS',
      '[0, 10, 20]', 'SOLVER.LRS', '[1, 0.1]'], 'SOLVER.LRS'),
    (['SOLVER.LR_POLICY', 'steps_with_decay', 'SOLVER.STEPS', '[0, 20, 10]'],
     'increasing'),
    (['SOLVER.WARM_UP_METHOD', 'cubic'], 'SOLVER.WARM_UP_METHOD'),
    (['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', True],
     'RESNETS.IMAGENET_PRETRAINED_WEIGHTS'),
    (['MODEL.RPN_ONLY', True, 'MODEL.MASK_ON', True,
      'MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up'],
     'RPN_ONLY'),
    (['TRAIN.BG_THRESH_LO', '0.6'], 'BG_THRESH_LO'),
    (['RESNETS.FREEZE_AT', 1], 'RESNETS.FREEZE_AT'),
    (['MODEL.NUM_CLASSES', 1], 'MODEL.NUM_CLASSES'),
])
def test_incompatible_options_are_reported(settings, fragment):
    assert fragment in _problems_of(settings)


@pytest.mark.parametrize('policy', ['step', 'steps_with_decay', 'cosine',
                                    'cosine_decay', 'steps_with_lrs',
                                    'steps_with_relative_lrs'])
def test_every_lr_policy_is_accepted(policy):
    merge_cfg_from_list(['SOLVER.LR_POLICY', policy, 'SOLVER.STEPS', '[0, 10]',
                         'SOLVER.LRS', '[0.1, 0.01]'])
    assert_and_infer_cfg()
    assert cfg.SOLVER.LR_POLICY == policy


def test_all_problems_reported_at_once():
    msg = _problems_of(['MODEL.MASK_ON', True, 'SOLVER.TYPE', 'LBFGS'])
    assert 'MRCNN.ROI_MASK_HEAD' in msg and 'SOLVER.TYPE' in msg


# ---------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------

def test_missing_train_weights_file_raises(tmp_path):
    missing = str(tmp_path / 'nope.pkl')
    merge_cfg_from_list(['TRAIN.WEIGHTS', missing])
    with pytest.raises(FileNotFoundError) as e:
        assert_and_infer_cfg()
    assert 'TRAIN.WEIGHTS' in str(e.value) and missing in str(e.value)


def test_existing_weights_file_and_urls_pass(tmp_path):
    weights = tmp_path / 'model.pkl'
    weights.write_bytes(b'')
    merge_cfg_from_list(['TEST.WEIGHTS', str(weights),
                         'TRAIN.WEIGHTS', 'https://example.com/x/R-50.pkl'])
    assert_and_infer_cfg()
    assert cfg.TEST.WEIGHTS == str(weights)
    assert cfg.TRAIN.WEIGHTS == 'https://example.com/x/R-50.pkl'


def test_url_in_download_cache_is_rewritten(tmp_path):
    cached = tmp_path / 'detectron' / 'ImageNetPretrained' / 'R-50.pkl'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'')
    merge_cfg_from_list([
        'DOWNLOAD_CACHE', str(tmp_path),
        'TRAIN.WEIGHTS',
        'https://dl.example.com/detectron/ImageNetPretrained/R-50.pkl'])
    assert_and_infer_cfg()
    assert cfg.TRAIN.WEIGHTS == str(cached)


def test_imagenet_weights_checked_only_when_resolved(tmp_path):
    # A named but absent file passes assert_and_infer_cfg (shipped configs
    # name files that exist only after downloading) ...
    merge_cfg_from_list([
        'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', True,
        'RESNETS.IMAGENET_PRETRAINED_WEIGHTS', 'data/pretrained_model/none.pkl'])
    assert_and_infer_cfg(make_immutable=False)
    # ... and resolving it for training raises, naming the key
    with pytest.raises(FileNotFoundError,
                       match='RESNETS.IMAGENET_PRETRAINED_WEIGHTS'):
        resolve_imagenet_pretrained_weights()
    present = tmp_path / 'R-50.pkl'
    present.write_bytes(b'')
    cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS = str(present)
    assert resolve_imagenet_pretrained_weights() == str(present)
    # a relative path is taken from ROOT_DIR
    cfg.ROOT_DIR = str(tmp_path)
    cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS = 'R-50.pkl'
    assert resolve_imagenet_pretrained_weights() == str(present)


# ---------------------------------------------------------------------------
# Helpers for the tools
# ---------------------------------------------------------------------------

def test_reset_cfg_restores_defaults_in_place():
    same = cfg
    merge_cfg_from_list(['TRAIN.SCALES', '(1,)'])
    assert_and_infer_cfg()
    reset_cfg()
    assert config_module.cfg is same
    assert cfg.TRAIN.SCALES == (600,)
    assert not cfg.is_immutable() and not cfg.TRAIN.is_immutable()
    cfg.TRAIN.SCALES = (2,)  # mutable again


def test_get_output_dir(tmp_path):
    merge_cfg_from_list(['OUTPUT_DIR', str(tmp_path),
                         'MODEL.TYPE', 'generalized_rcnn'])
    out = get_output_dir(('coco_2017_train', 'extra'), training=True)
    assert out == os.path.join(str(tmp_path), 'train',
                               'coco_2017_train:extra', 'generalized_rcnn')
    assert os.path.isdir(out)
    out = get_output_dir('coco_2017_val', training=False)
    assert out == os.path.join(str(tmp_path), 'test', 'coco_2017_val',
                               'generalized_rcnn')
    with pytest.raises(TypeError, match='datasets'):
        get_output_dir(3)


def test_dump_cfg_round_trips():
    merge_cfg_from_list(['TRAIN.SCALES', '(500, 600)', 'SOLVER.STEPS', '[0, 5]',
                         'MODEL.CONV_BODY', 'FPN.add_fpn_ResNet50_conv5_body',
                         'FPN.FPN_ON', 'True'])
    text = dump_cfg()
    expected = copy.deepcopy(cfg)
    reset_cfg()
    merge_cfg_from_cfg(load_cfg(text))
    assert cfg.TRAIN.SCALES == (500, 600)
    assert cfg.SOLVER.STEPS == [0, 5]
    assert cfg.MODEL.CONV_BODY == 'FPN.fpn_ResNet50_conv5_body'
    for key in ('TRAIN', 'TEST', 'MODEL', 'SOLVER', 'FPN'):
        assert cfg[key] == expected[key]
    np.testing.assert_array_equal(cfg.PIXEL_MEANS, expected.PIXEL_MEANS)


# What Detectron's yaml.dump of its cfg looks like inside a weights file.
DETECTRON_DUMP = '''!!python/object/new:detectron.utils.collections.AttrDict
dictitems:
  BBOX_XFORM_CLIP: !!python/object/apply:numpy.core.multiarray.scalar
  - &id001 !!python/object/apply:numpy.dtype
    args: [f8, 0, 1]
    state: !!python/tuple [3, <, null, null, null, -1, -1, 0]
  - !!binary |
    qeISGmmKEEA=
  PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct
    args:
    - !!python/name:numpy.ndarray ''
    - !!python/tuple [0]
    - !!binary |
      Yg==
    state: !!python/tuple
    - 1
    - !!python/tuple [1, 1, 3]
    - *id001
    - false
    - !!binary |
      0LNZ9bm+WUB/arx0k/xcQK+UZYhjsV5A
  TRAIN: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems:
      SCALES: !!python/tuple [800]
      WEIGHTS: /tmp/R-50.pkl
    state: {__immutable__: true}
state: {__immutable__: true}
'''


def test_load_cfg_reads_detectron_dumps():
    loaded = load_cfg(DETECTRON_DUMP)
    assert isinstance(loaded, AttrDict) and isinstance(loaded.TRAIN, AttrDict)
    assert loaded.TRAIN.SCALES == (800,)
    assert float(loaded.BBOX_XFORM_CLIP) == pytest.approx(math.log(62.5))
    np.testing.assert_allclose(loaded.PIXEL_MEANS,
                               [[[102.9801, 115.9465, 122.7717]]])
    loaded.TRAIN.pop('WEIGHTS')  # not a file here
    merge_cfg_from_cfg(loaded)
    assert cfg.TRAIN.SCALES == (800,)
    assert type(cfg.BBOX_XFORM_CLIP) is float


@pytest.mark.parametrize('text', [
    '!!python/object/apply:os.system ["echo unsafe"]',
    '!!python/name:os.system ""',
    '!!python/object/new:subprocess.Popen [[ls]]',
])
def test_load_cfg_refuses_other_python_objects(text):
    import yaml
    with pytest.raises(yaml.YAMLError, match='refusing'):
        load_cfg(text)


def test_every_bbox_vote_scoring_method_validates():
    """Detectron's box voting accepts each of its scoring methods, TEMP_AVG included."""
    from pydetectron.core import config as config_mod
    for method in ('ID', 'TEMP_AVG', 'AVG', 'IOU_AVG', 'GENERALIZED_AVG', 'QUASI_SUM'):
        config_mod.reset_cfg()
        config_mod.merge_cfg_from_list(['TEST.BBOX_VOTE.SCORING_METHOD', method])
        config_mod.assert_and_infer_cfg(make_immutable=False)
    config_mod.reset_cfg()
    config_mod.merge_cfg_from_list(['TEST.BBOX_VOTE.SCORING_METHOD', 'MEDIAN'])
    with pytest.raises(ValueError, match='SCORING_METHOD'):
        config_mod.assert_and_infer_cfg(make_immutable=False)
    config_mod.reset_cfg()
