"""Detectron's configuration system: the global `cfg`, its defaults, merging.

Every key and default of Detectron's `detectron/core/config.py` is here, plus
the keys Detectron.pytorch added (ImageNet weights, GroupNorm in ResNets,
aspect cropping, RPN output options, bias learning-rate rules, ...).  Do not
edit the defaults to run an experiment: write a YAML file and merge it.

Typical use (this is what `tools/*.py` do)::

    from pydetectron.core.config import (
        cfg, merge_cfg_from_file, merge_cfg_from_list, assert_and_infer_cfg)
    merge_cfg_from_file('configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml')
    merge_cfg_from_list(['TRAIN.SCALES', '(500,)', 'NUM_GPUS', '1'])
    assert_and_infer_cfg()          # infers RPN.RPN_ON, ...; freezes cfg
    cfg.TRAIN.SCALES                # (500,)

Merging rules
-------------
* Only existing keys may be set.  An unknown key raises `ConfigKeyError`
  naming the full key, where it came from (the YAML file, `--set`), and the
  closest valid key.  A key Detectron renamed has its value moved to the new
  key with a warning (TEST.SCALES: (800,) -> TEST.SCALE: 800), or raises with
  a conversion hint when it cannot be; keys Detectron removed are ignored
  with a warning.
* Types must match the default: YAML/`--set` lists become tuples where the
  default is a tuple (and tuples become lists where it is a list); an int is
  accepted for a float key; a number is accepted for a string key; a bare
  string is accepted for TRAIN/TEST.DATASETS and PROPOSAL_FILES (one-tuple).
  Anything else raises `ConfigTypeError` naming the key and both types.
* Strings given to `merge_cfg_from_list` (the `--set` flag) are read with
  `ast.literal_eval` ('0.5' -> 0.5, '(800,)' -> (800,)); a value that is not
  a Python literal stays a string ('coco_2017_val').
* Function-name keys (MODEL.CONV_BODY, FAST_RCNN.ROI_BOX_HEAD,
  MRCNN.ROI_MASK_HEAD, KRCNN.ROI_KEYPOINTS_HEAD) are stored in canonical
  form `module.function`, so Detectron's own YAML loads unchanged:
  `FPN.add_fpn_ResNet50_conv5_body` -> `FPN.fpn_ResNet50_conv5_body`,
  `head_builder.add_roi_2mlp_head` -> `fast_rcnn_heads.roi_2mlp_head`.
  See `canonical_func_name`.
* The backward-compatibility tables (removed and renamed keys, Detectron's
  function names) and the restricted YAML loader `load_cfg` live in
  `pydetectron.core.config_compat`; this module re-exports their public
  names, so import them from here.

Weights-file rule
-----------------
`assert_and_infer_cfg()` checks the weights paths a *user* names for this run:
TRAIN.WEIGHTS and TEST.WEIGHTS must exist when set (URLs are left for the tool
to download; with `cache_urls=True` a URL already in DOWNLOAD_CACHE is
rewritten to the cached file).  It checks only that
RESNETS.IMAGENET_PRETRAINED_WEIGHTS is *named* when
MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is on: the shipped configs name
`data/pretrained_model/*.pkl` files that exist only after
`tools/download_imagenet_weights.py`, and configs must validate without them.
The training tool calls `resolve_imagenet_pretrained_weights()` when training
starts from ImageNet weights (and not from a checkpoint); that call raises if
the file is missing.

Inferred keys (never set them in a YAML file): RPN.RPN_ON,
TEST.PRECOMPUTED_PROPOSALS, MODEL.SHARE_RES5 (here), CUDA and
FPN.RPN_COLLECT_SCALE (set by the training tool).

Tests: `reset_cfg()` restores every default in place (the `cfg` object keeps
its identity, so modules that imported it see the reset).
"""

import ast
import copy
import difflib
import logging
import math
import os
import os.path as osp

import numpy as np
import yaml

from pydetectron.utils.collections import AttrDict
# Backward compatibility: renamed / removed keys, Detectron's function names and
# the restricted YAML loader. Re-exported: import them from here as before.
from pydetectron.core.config_compat import (  # noqa: F401
    CANONICAL_FUNC_NAMES, DETECTRON_PYTORCH_DEFAULTS, DETECTRON_PYTORCH_KEYS,
    FUNC_NAME_KEYS,
    IGNORED_KEYS, ConfigKeyError, ConfigTypeError, ConfigValueError,
    _DEPRECATED_KEYS, _RENAMED_KEYS, canonical_func_name,
    is_detectron_pytorch_config, load_cfg, repair_unindented_keys)

logger = logging.getLogger(__name__)

__C = AttrDict()
# Consumers get the config with:  from pydetectron.core.config import cfg
cfg = __C

# Note: YAML 1.1 reads a bare `ON` as True, so no key is named '.ON'; the
# switches are called *_ON (FPN_ON, MASK_ON) or ENABLED instead.


# ---------------------------------------------------------------------------- #
# Training options
# ---------------------------------------------------------------------------- #
__C.TRAIN = AttrDict()

# Weights (.pkl from Detectron or .pth checkpoint) to initialise the whole
# network from; empty means start from ImageNet weights or from scratch
__C.TRAIN.WEIGHTS = ''

# Names of the training datasets (see datasets.dataset_catalog); training uses
# their union. The training tool's --dataset flag overrides this
__C.TRAIN.DATASETS = ()

# Shorter-side target sizes in pixels; with several, each image picks one at
# random (scale jitter)
__C.TRAIN.SCALES = (600, )

# Cap on the longer side of a resized training image
__C.TRAIN.MAX_SIZE = 1000

# Images per GPU in one minibatch (total = IMS_PER_BATCH * NUM_GPUS)
__C.TRAIN.IMS_PER_BATCH = 2

# RoIs sampled per image for the box head (e.g. 512 * 2 images * 8 GPUs)
__C.TRAIN.BATCH_SIZE_PER_IM = 64

# Largest share of the sampled RoIs that may be foreground (class > 0)
__C.TRAIN.FG_FRACTION = 0.25

# An RoI with IoU >= FG_THRESH against some ground truth is foreground
__C.TRAIN.FG_THRESH = 0.5

# An RoI whose best IoU lies in [BG_THRESH_LO, BG_THRESH_HI) is background
__C.TRAIN.BG_THRESH_HI = 0.5
__C.TRAIN.BG_THRESH_LO = 0.0

# Add a horizontally flipped copy of every training image
__C.TRAIN.USE_FLIPPED = True

# IoU an RoI needs with its ground-truth box to get box-regression targets
__C.TRAIN.BBOX_THRESH = 0.5

# Iterations between checkpoints, for 1 GPU; Detectron divides it by NUM_GPUS
# so that the period follows the linear schedule scaling (80000 / 8 => 10000).
# Detectron.pytorch's YAML files get its default, 20000 (see config_compat)
__C.TRAIN.SNAPSHOT_ITERS = 80000

# Precomputed proposal files, one per entry of TRAIN.DATASETS, for models
# without an RPN (Fast R-CNN); every proposal in them is used
__C.TRAIN.PROPOSAL_FILES = ()

# Put images of like aspect ratio (both landscape or both portrait) in the
# same minibatch; saves a lot of padding memory
__C.TRAIN.ASPECT_GROUPING = True

# Crop images whose aspect ratio (width / height) lies outside
# [ASPECT_LO, ASPECT_HI] to that range (Detectron.pytorch addition)
__C.TRAIN.ASPECT_CROPPING = False
__C.TRAIN.ASPECT_HI = 2.0
__C.TRAIN.ASPECT_LO = 0.5

# ---------------------------------------------------------------------------- #
# RPN training options
# ---------------------------------------------------------------------------- #

# An anchor with IoU >= this against some ground truth is a positive
__C.TRAIN.RPN_POSITIVE_OVERLAP = 0.7

# An anchor whose best IoU is < this is a negative
__C.TRAIN.RPN_NEGATIVE_OVERLAP = 0.3

# Largest share of positives among the sampled anchors
__C.TRAIN.RPN_FG_FRACTION = 0.5

# Anchors sampled per image for the RPN losses
__C.TRAIN.RPN_BATCH_SIZE_PER_IM = 256

# NMS IoU threshold on RPN proposals during training
__C.TRAIN.RPN_NMS_THRESH = 0.7

# Top-scoring proposals kept before NMS, per image (per FPN level with FPN)
__C.TRAIN.RPN_PRE_NMS_TOP_N = 12000

# Proposals kept after NMS. Without FPN this is per image; with FPN the
# proposals of all levels are collected and the top N kept *per minibatch*
# (Detectron's behaviour, see FPN.RPN_COLLECT_SCALE)
__C.TRAIN.RPN_POST_NMS_TOP_N = 2000

# Anchors reaching more than this many pixels outside the image are ignored;
# -1 (or a huge value) keeps every anchor
__C.TRAIN.RPN_STRADDLE_THRESH = 0

# Proposals with width or height below this (in original image pixels) are
# dropped
__C.TRAIN.RPN_MIN_SIZE = 0

# A proposal lying inside a crowd region by at least this fraction of its own
# area (intersection / proposal area) is removed from training
__C.TRAIN.CROWD_FILTER_THRESH = 0.7

# Ground-truth objects smaller than this area are ignored (-1: keep all)
__C.TRAIN.GT_MIN_AREA = -1

# Do not train the backbone (conv body, FPN included) at all
__C.TRAIN.FREEZE_CONV_BODY = False

# Detectron's name of RESNETS.FREEZE_AT (Detectron.pytorch moved it there): a
# value other than 2 set in either key is copied to the other; two different
# non-default values are an error
__C.TRAIN.FREEZE_AT = 2

# Copy TRAIN.WEIGHTS into the output directory when training starts (Detectron
# then treats the copy as a candidate checkpoint)
__C.TRAIN.COPY_WEIGHTS = False

# Caffe2 only: proposals are always generated on the model's device here
__C.TRAIN.GENERATE_PROPOSALS_ON_GPU = False

# Allow training a body with frozen BatchNorm (AffineChannel) from random
# weights: neither TRAIN.WEIGHTS, --load_ckpt / --load_detectron nor ImageNet
# weights. Off, such a run is refused: the affines keep their initial
# scale 1 / offset 0 and never learn, so the body cannot normalise its
# activations (pydetectron addition; GroupNorm bodies train from scratch)
__C.TRAIN.ALLOW_RANDOM_FROZEN_BN = False

# Resume from the newest checkpoint found in the output directory
__C.TRAIN.AUTO_RESUME = True


# ---------------------------------------------------------------------------- #
# Data loader options
# ---------------------------------------------------------------------------- #
__C.DATA_LOADER = AttrDict()

# Worker processes that build minibatches
__C.DATA_LOADER.NUM_THREADS = 4

# Caffe2 loader queue sizes; kept so Detectron YAML loads (the PyTorch loader
# uses NUM_THREADS and its own prefetching)
__C.DATA_LOADER.MINIBATCH_QUEUE_SIZE = 64
__C.DATA_LOADER.BLOBS_QUEUE_CAPACITY = 8


# ---------------------------------------------------------------------------- #
# Inference ('test') options
# ---------------------------------------------------------------------------- #
__C.TEST = AttrDict()

# Weights to test; the test tool's --load_ckpt / --load_detectron override it
__C.TEST.WEIGHTS = ''

# Names of the datasets to evaluate on, one after the other
__C.TEST.DATASETS = ()

# Shorter-side size of the test image (a single scale; see BBOX_AUG for more)
__C.TEST.SCALE = 600

# Cap on the longer side of a resized test image
__C.TEST.MAX_SIZE = 1000

# Per-class NMS IoU threshold on the final detections
__C.TEST.NMS = 0.3

# Apply the box head's regression deltas to the RoIs (False: score RoIs only)
__C.TEST.BBOX_REG = True

# Precomputed proposal files, one per entry of TEST.DATASETS
__C.TEST.PROPOSAL_FILES = ()

# Most proposals per image taken from a proposal file
__C.TEST.PROPOSAL_LIMIT = 2000

# NMS IoU threshold on RPN proposals at test time
__C.TEST.RPN_NMS_THRESH = 0.7

# Top-scoring proposals kept before NMS (per FPN level with FPN)
__C.TEST.RPN_PRE_NMS_TOP_N = 12000

# Proposals kept after NMS, per image (all FPN levels together)
__C.TEST.RPN_POST_NMS_TOP_N = 2000

# Proposals with width or height below this (original pixels) are dropped
__C.TEST.RPN_MIN_SIZE = 0

# Images per forward pass when the test engine batches images (pydetectron
# addition; Detectron tests one image at a time)
__C.TEST.IMS_PER_BATCH = 1

# Most detections returned per image, over all classes (COCO's limit)
__C.TEST.DETECTIONS_PER_IM = 100

# Detections scoring below this are discarded before NMS
__C.TEST.SCORE_THRESH = 0.05

# Keep the detection result files after evaluation (they can be large)
__C.TEST.COMPETITION_MODE = True

# Evaluate with the COCO json evaluator even for datasets that have their own
# (e.g. COCO-style AP on PASCAL VOC)
__C.TEST.FORCE_JSON_DATASET_EVAL = False

# [Inferred; do not set] True when test proposals come from files, i.e. the
# model has neither an RPN nor RetinaNet
__C.TEST.PRECOMPUTED_PROPOSALS = True

# [pydetectron; detectron2's key] Evaluate the model being trained on
# TEST.DATASETS after every EVAL_PERIOD steps and after the last step
# (tools/train_net_step.py --eval_period); 0: only Detectron's test after
# training (which --skip-test skips)
__C.TEST.EVAL_PERIOD = 0

# Caffe2 only: proposals are always generated on the model's device here
__C.TEST.GENERATE_PROPOSALS_ON_GPU = False

# Proposal average recall (box_proposal AR) averaged per class rather than
# over all objects
__C.TEST.CLASS_SPECIFIC_AR = False


# ---------------------------------------------------------------------------- #
# Test-time augmentation for boxes
# ---------------------------------------------------------------------------- #
__C.TEST.BBOX_AUG = AttrDict()

# Turn box test-time augmentation on
__C.TEST.BBOX_AUG.ENABLED = False

# How the scores of the augmented passes are combined: 'ID' (keep the
# original pass), 'AVG' (mean) or 'UNION' (keep all, let NMS decide)
__C.TEST.BBOX_AUG.SCORE_HEUR = 'UNION'

# Same choices, for the box coordinates
__C.TEST.BBOX_AUG.COORD_HEUR = 'UNION'

# Also run the flipped image at TEST.SCALE
__C.TEST.BBOX_AUG.H_FLIP = False

# Extra shorter-side scales to run
__C.TEST.BBOX_AUG.SCALES = ()

# Cap on the longer side for the extra scales
__C.TEST.BBOX_AUG.MAX_SIZE = 4000

# Also run the flipped image at each extra scale
__C.TEST.BBOX_AUG.SCALE_H_FLIP = False

# Keep, from each extra scale, only the boxes whose area suits that scale,
# using the area thresholds AREA_TH_LO / AREA_TH_HI (in pixels squared)
__C.TEST.BBOX_AUG.SCALE_SIZE_DEP = False
__C.TEST.BBOX_AUG.AREA_TH_LO = 50**2
__C.TEST.BBOX_AUG.AREA_TH_HI = 180**2

# Extra aspect ratios (stretch of the width) to run
__C.TEST.BBOX_AUG.ASPECT_RATIOS = ()

# Also run the flipped image at each extra aspect ratio
__C.TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP = False

# ---------------------------------------------------------------------------- #
# Test-time augmentation for masks
# ---------------------------------------------------------------------------- #
__C.TEST.MASK_AUG = AttrDict()

# Turn mask test-time augmentation on
__C.TEST.MASK_AUG.ENABLED = False

# How the mask passes are combined: 'SOFT_AVG' / 'SOFT_MAX' on probabilities,
# 'LOGIT_AVG' on logits
__C.TEST.MASK_AUG.HEUR = 'SOFT_AVG'

# Also run the flipped image at TEST.SCALE
__C.TEST.MASK_AUG.H_FLIP = False

# Extra shorter-side scales to run
__C.TEST.MASK_AUG.SCALES = ()

# Cap on the longer side for the extra scales
__C.TEST.MASK_AUG.MAX_SIZE = 4000

# Also run the flipped image at each extra scale
__C.TEST.MASK_AUG.SCALE_H_FLIP = False

# Use a scale's masks only for boxes whose area suits that scale
__C.TEST.MASK_AUG.SCALE_SIZE_DEP = False
__C.TEST.MASK_AUG.AREA_TH = 180**2

# Extra aspect ratios (stretch of the width) to run
__C.TEST.MASK_AUG.ASPECT_RATIOS = ()

# Also run the flipped image at each extra aspect ratio
__C.TEST.MASK_AUG.ASPECT_RATIO_H_FLIP = False

# ---------------------------------------------------------------------------- #
# Test-time augmentation for keypoints
# ---------------------------------------------------------------------------- #
__C.TEST.KPS_AUG = AttrDict()

# Turn keypoint test-time augmentation on
__C.TEST.KPS_AUG.ENABLED = False

# How the heatmaps of the passes are combined: 'HM_AVG' or 'HM_MAX'
__C.TEST.KPS_AUG.HEUR = 'HM_AVG'

# Also run the flipped image at TEST.SCALE
__C.TEST.KPS_AUG.H_FLIP = False

# Extra shorter-side scales to run
__C.TEST.KPS_AUG.SCALES = ()

# Cap on the longer side for the extra scales
__C.TEST.KPS_AUG.MAX_SIZE = 4000

# Also run the flipped image at each extra scale
__C.TEST.KPS_AUG.SCALE_H_FLIP = False

# Use a scale's heatmaps only for boxes whose area suits that scale
__C.TEST.KPS_AUG.SCALE_SIZE_DEP = False
__C.TEST.KPS_AUG.AREA_TH = 180**2

# Extra aspect ratios (stretch of the width) to run
__C.TEST.KPS_AUG.ASPECT_RATIOS = ()

# Also run the flipped image at each extra aspect ratio
__C.TEST.KPS_AUG.ASPECT_RATIO_H_FLIP = False

# ---------------------------------------------------------------------------- #
# Soft-NMS (Bodla et al. 2017); its IoU threshold is TEST.NMS
# ---------------------------------------------------------------------------- #
__C.TEST.SOFT_NMS = AttrDict()

# Decay overlapping scores instead of removing the boxes
__C.TEST.SOFT_NMS.ENABLED = False
# Decay function: 'linear', 'gaussian' (uses SIGMA) or 'hard' (plain NMS)
__C.TEST.SOFT_NMS.METHOD = 'linear'
# Width of the gaussian decay
__C.TEST.SOFT_NMS.SIGMA = 0.5

# ---------------------------------------------------------------------------- #
# Box voting (Multi-Region CNN, Gidaris & Komodakis); NMS itself uses TEST.NMS
# ---------------------------------------------------------------------------- #
__C.TEST.BBOX_VOTE = AttrDict()

# Refine every box kept by NMS with the boxes that voted for it
__C.TEST.BBOX_VOTE.ENABLED = False

# Boxes with IoU >= VOTE_TH against a kept box take part in its vote
__C.TEST.BBOX_VOTE.VOTE_TH = 0.8

# How the voters' scores set the kept box's score: 'ID', 'TEMP_AVG', 'AVG', 'IOU_AVG',
# 'GENERALIZED_AVG' or 'QUASI_SUM'
__C.TEST.BBOX_VOTE.SCORING_METHOD = 'ID'

# Exponent / parameter of GENERALIZED_AVG and QUASI_SUM
__C.TEST.BBOX_VOTE.SCORING_METHOD_BETA = 1.0


# ---------------------------------------------------------------------------- #
# Model options
# ---------------------------------------------------------------------------- #
__C.MODEL = AttrDict()

# Model family built by modeling.model_builder ('generalized_rcnn')
__C.MODEL.TYPE = ''

# Backbone, as 'module.function' (e.g. 'FPN.fpn_ResNet50_conv5_body');
# Detectron's 'FPN.add_fpn_ResNet50_conv5_body' is accepted and normalised
__C.MODEL.CONV_BODY = ''

# Number of classes including background (81 for COCO); the tools set it
# from the dataset when it is left at -1
__C.MODEL.NUM_CLASSES = -1

# One set of box deltas shared by all classes instead of one per class
__C.MODEL.CLS_AGNOSTIC_BBOX_REG = False

# Weights (wx, wy, ww, wh) dividing the box-regression deltas; chosen so that
# COCO targets have roughly unit variance
__C.MODEL.BBOX_REG_WEIGHTS = (10., 10., 5., 5.)

# Training: train RPN and Fast R-CNN jointly, end to end (Faster R-CNN).
# Inference: take proposals from the model's RPN rather than from files
__C.MODEL.FASTER_RCNN = False

# Predict instance masks (Mask R-CNN)
__C.MODEL.MASK_ON = False

# Predict keypoints (Mask R-CNN's keypoint variant)
__C.MODEL.KEYPOINTS_ON = False

# The model stops at RPN proposals (proposal-only model, no detections)
__C.MODEL.RPN_ONLY = False

# Caffe2 net executor; kept so Detectron YAML loads (unused in PyTorch)
__C.MODEL.EXECUTION_TYPE = 'dag'

# [Inferred; do not set] The mask/keypoint head reuses the box head's res5
# stage (its weights and, in training, its forward pass): C4 models with
# 'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare'
__C.MODEL.SHARE_RES5 = False

# Initialise the backbone from RESNETS.IMAGENET_PRETRAINED_WEIGHTS
# (Detectron.pytorch's way; Detectron's own YAML uses TRAIN.WEIGHTS instead,
# hence the default False here). See the weights-file rule in the docstring
__C.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS = False

# Detectron.pytorch switch for unsupervised pose experiments (unused)
__C.MODEL.UNSUPERVISED_POSE = False


# ---------------------------------------------------------------------------- #
# RetinaNet options
# ---------------------------------------------------------------------------- #
__C.RETINANET = AttrDict()

# Build RetinaNet instead of an R-CNN
__C.RETINANET.RETINANET_ON = False

# Anchor aspect ratios (height / width)
__C.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)

# Anchor sizes per octave at each level
__C.RETINANET.SCALES_PER_OCTAVE = 3

# Anchor size = ANCHOR_SCALE * level stride (before octave scaling)
__C.RETINANET.ANCHOR_SCALE = 4

# Convs in each of the class and box towers (the prediction conv excluded)
__C.RETINANET.NUM_CONVS = 4

# Weight of the box-regression loss
__C.RETINANET.BBOX_REG_WEIGHT = 1.0

# Smooth-L1 beta of the box-regression loss
__C.RETINANET.BBOX_REG_BETA = 0.11

# Top-scoring locations per FPN level kept before NMS at inference
__C.RETINANET.PRE_NMS_TOP_N = 1000

# Anchors with IoU >= this are positives
__C.RETINANET.POSITIVE_OVERLAP = 0.5

# Anchors with IoU < this are negatives
__C.RETINANET.NEGATIVE_OVERLAP = 0.4

# Focal loss alpha (weight of positives)
__C.RETINANET.LOSS_ALPHA = 0.25

# Focal loss gamma (focusing exponent)
__C.RETINANET.LOSS_GAMMA = 2.0

# Initial foreground probability, which sets the classifier bias
__C.RETINANET.PRIOR_PROB = 0.01

# One tower shared by classification and box regression
__C.RETINANET.SHARE_CLS_BBOX_TOWER = False

# Per-class box regression instead of class-agnostic
__C.RETINANET.CLASS_SPECIFIC_BBOX = False

# Softmax instead of per-class sigmoids in the classifier
__C.RETINANET.SOFTMAX = False

# Locations scoring above this are considered at inference
__C.RETINANET.INFERENCE_TH = 0.05


# ---------------------------------------------------------------------------- #
# Solver options
# The values are used as written: moving from 8 GPUs to N, scale BASE_LR,
# MAX_ITER and STEPS yourself (linear scaling rule, Goyal et al. 2017); the
# training tool can do it for you when it changes the batch size.
# ---------------------------------------------------------------------------- #
__C.SOLVER = AttrDict()

# Optimizer: 'SGD' (momentum SGD, Detectron's) or 'Adam'
__C.SOLVER.TYPE = 'SGD'

# Learning rate of the schedule at its first step
__C.SOLVER.BASE_LR = 0.001

# Learning-rate schedule:
#   'step':             BASE_LR * GAMMA ** (iter // STEP_SIZE)
#   'steps_with_decay': BASE_LR * GAMMA ** k, k = index of the last entry of
#                       STEPS (which starts with 0) that is <= iter
#   'steps_with_lrs':   LRS[k], with k as above
#   'steps_with_relative_lrs': BASE_LR * LRS[k]
#   'cosine_decay' (or 'cosine'): BASE_LR * (1 + cos(pi * iter / MAX_ITER)) / 2
#   'exp_decay':        BASE_LR * exp(log(GAMMA) * iter / MAX_ITER), falling
#                       smoothly from BASE_LR to GAMMA * BASE_LR
__C.SOLVER.LR_POLICY = 'step'

# Decay factor of 'step' and 'steps_with_decay'; for 'exp_decay' the ratio of
# the final to the initial rate
__C.SOLVER.GAMMA = 0.1

# Period of 'step'
__C.SOLVER.STEP_SIZE = 30000

# Iterations where the 'steps_with_*' policies change the rate; the first
# entry is 0
__C.SOLVER.STEPS = []

# Rates (or BASE_LR multipliers) of 'steps_with_lrs' /
# 'steps_with_relative_lrs', one per entry of STEPS
__C.SOLVER.LRS = []

# Total number of training iterations
__C.SOLVER.MAX_ITER = 40000

# SGD momentum
__C.SOLVER.MOMENTUM = 0.9

# L2 weight decay
__C.SOLVER.WEIGHT_DECAY = 0.0005
# L2 weight decay on GroupNorm scales and offsets
__C.SOLVER.WEIGHT_DECAY_GN = 0.0

# Biases learn at twice the rate (Caffe habit Detectron keeps)
__C.SOLVER.BIAS_DOUBLE_LR = True

# Apply weight decay to biases too
__C.SOLVER.BIAS_WEIGHT_DECAY = False

# Iterations of warm-up to BASE_LR at the start of training
__C.SOLVER.WARM_UP_ITERS = 500

# Warm-up starts at BASE_LR * WARM_UP_FACTOR
__C.SOLVER.WARM_UP_FACTOR = 1.0 / 3.0

# 'linear' (ramp from the factor to 1) or 'constant' (stay at the factor)
__C.SOLVER.WARM_UP_METHOD = 'linear'

# When the rate changes, rescale the momentum buffer by new_lr / old_lr, as
# Caffe2's momentum update needs to stay equivalent
__C.SOLVER.SCALE_MOMENTUM = True
# ... but only when the rate changes by more than this ratio (so linear
# warm-up does not rescale on every iteration)
__C.SOLVER.SCALE_MOMENTUM_THRESHOLD = 1.1

# Log a rate change only when it exceeds this ratio
__C.SOLVER.LOG_LR_CHANGE_THRESHOLD = 1.1


# ---------------------------------------------------------------------------- #
# Fast R-CNN (box head) options
# ---------------------------------------------------------------------------- #
__C.FAST_RCNN = AttrDict()

# Box head, as 'module.function' (e.g. 'fast_rcnn_heads.roi_2mlp_head');
# Detectron's 'head_builder.add_roi_2mlp_head' is accepted and normalised
__C.FAST_RCNN.ROI_BOX_HEAD = ''

# Width of the hidden fc layers of the MLP heads
__C.FAST_RCNN.MLP_HEAD_DIM = 1024

# Channels of the convs of the Xconv1fc heads
__C.FAST_RCNN.CONV_HEAD_DIM = 256
# Number of those convs
__C.FAST_RCNN.NUM_STACKED_CONVS = 4

# How RoI features are pooled: 'RoIPoolF' (RoI max pooling), 'RoIAlign'
# (Detectron's, without the half-pixel shift) or 'RoICrop' (Detectron.pytorch:
# crop and resize with a sampling grid)
__C.FAST_RCNN.ROI_XFORM_METHOD = 'RoIPoolF'

# RoIAlign samples per bin side (0: adaptive, ceil(roi_size / bin_count))
__C.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO = 0

# Side of the pooled RoI feature
__C.FAST_RCNN.ROI_XFORM_RESOLUTION = 14


# ---------------------------------------------------------------------------- #
# RPN options
# ---------------------------------------------------------------------------- #
__C.RPN = AttrDict()

# [Inferred; do not set] The model has an RPN (RPN_ONLY or FASTER_RCNN)
__C.RPN.RPN_ON = False

# Hidden conv of the RPN head as wide as its input (Detectron); False uses
# OUT_DIM channels instead
__C.RPN.OUT_DIM_AS_IN_DIM = True

# Hidden conv width when OUT_DIM_AS_IN_DIM is False
__C.RPN.OUT_DIM = 512

# Objectness classifier: 'sigmoid' (Detectron, one logit per anchor) or
# 'softmax' (two logits per anchor)
__C.RPN.CLS_ACTIVATION = 'sigmoid'

# Anchor sizes in pixels of the network input (single-level RPN only; FPN
# uses FPN.RPN_*)
__C.RPN.SIZES = (64, 128, 256, 512)

# Stride of the feature map the single-level RPN runs on
__C.RPN.STRIDE = 16

# Anchor aspect ratios (height / width)
__C.RPN.ASPECT_RATIOS = (0.5, 1, 2)


# ---------------------------------------------------------------------------- #
# FPN options
# ---------------------------------------------------------------------------- #
__C.FPN = AttrDict()

# Build a feature pyramid on the backbone
__C.FPN.FPN_ON = False

# Channels of every pyramid level
__C.FPN.DIM = 256

# Start the lateral 1x1 convs at zero output
__C.FPN.ZERO_INIT_LATERAL = False

# Stride of the coarsest level; input blobs are padded to a multiple of it
__C.FPN.COARSEST_STRIDE = 32

# FPN can serve the RPN, the RoI heads, or both:

# Pool each RoI from the pyramid level its size maps to
__C.FPN.MULTILEVEL_ROIS = False
# Level mapping: an RoI of side ROI_CANONICAL_SCALE goes to level
# ROI_CANONICAL_LEVEL, one octave up or down per doubling or halving
__C.FPN.ROI_CANONICAL_SCALE = 224
__C.FPN.ROI_CANONICAL_LEVEL = 4
# Coarsest level RoIs are pooled from
__C.FPN.ROI_MAX_LEVEL = 5
# Finest level RoIs are pooled from
__C.FPN.ROI_MIN_LEVEL = 2

# Run the RPN on every pyramid level
__C.FPN.MULTILEVEL_RPN = False
# Coarsest RPN level
__C.FPN.RPN_MAX_LEVEL = 6
# Finest RPN level
__C.FPN.RPN_MIN_LEVEL = 2
# Anchor aspect ratios on every level
__C.FPN.RPN_ASPECT_RATIOS = (0.5, 1, 2)
# Anchor size on RPN_MIN_LEVEL, doubling per level (32..512 for levels 2..6)
__C.FPN.RPN_ANCHOR_START_SIZE = 32
# [Inferred; set by the training tool] TRAIN.RPN_POST_NMS_TOP_N is multiplied
# by this when the per-minibatch proposals are collected (the number of images
# per minibatch relative to the config's); 1 at test time
__C.FPN.RPN_COLLECT_SCALE = 1.0
# Add the extra P6/P7 levels of RetinaNet
__C.FPN.EXTRA_CONV_LEVELS = False
# GroupNorm in the FPN layers (laterals and outputs)
__C.FPN.USE_GN = False


# ---------------------------------------------------------------------------- #
# Mask R-CNN options
# ---------------------------------------------------------------------------- #
__C.MRCNN = AttrDict()

# Mask head, as 'module.function'
# (e.g. 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs')
__C.MRCNN.ROI_MASK_HEAD = ''

# Side of the predicted mask
__C.MRCNN.RESOLUTION = 14

# RoI pooling of the mask head (see FAST_RCNN.ROI_XFORM_METHOD)
__C.MRCNN.ROI_XFORM_METHOD = 'RoIAlign'

# Side of the pooled RoI feature of the mask head
__C.MRCNN.ROI_XFORM_RESOLUTION = 7

# RoIAlign samples per bin side (0: adaptive)
__C.MRCNN.ROI_XFORM_SAMPLING_RATIO = 0

# Channels of the mask head convs
__C.MRCNN.DIM_REDUCED = 256

# Dilation of the mask head convs
__C.MRCNN.DILATION = 2

# Bilinear upsampling factor applied to the predicted mask logits
__C.MRCNN.UPSAMPLE_RATIO = 1

# Predict the mask with an fc layer instead of a 1x1 conv
__C.MRCNN.USE_FC_OUTPUT = False

# Initialiser of the mask head weights: 'GaussianFill' or 'MSRAFill'
__C.MRCNN.CONV_INIT = 'GaussianFill'

# One mask per class (False: one class-agnostic mask)
__C.MRCNN.CLS_SPECIFIC_MASK = True

# Weight of the mask loss
__C.MRCNN.WEIGHT_LOSS_MASK = 1.0

# Probability above which a soft mask pixel is part of the object
__C.MRCNN.THRESH_BINARIZE = 0.5

# Compute the mask loss on the true class's channel only, without building a
# one-hot target for every class (Detectron.pytorch)
__C.MRCNN.MEMORY_EFFICIENT_LOSS = True


# ---------------------------------------------------------------------------- #
# Keypoint R-CNN options
# ---------------------------------------------------------------------------- #
__C.KRCNN = AttrDict()

# Keypoint head, as 'module.function'
# (e.g. 'keypoint_rcnn_heads.roi_pose_head_v1convX')
__C.KRCNN.ROI_KEYPOINTS_HEAD = ''

# Side of the predicted heatmaps, on which the loss is computed (e.g. 56)
__C.KRCNN.HEATMAP_SIZE = -1

# Bilinear upsampling factor of the heatmap logits
__C.KRCNN.UP_SCALE = -1

# Put a transposed conv (DECONV_DIM channels) between the head convs and the
# heatmap predictor
__C.KRCNN.USE_DECONV = False
__C.KRCNN.DECONV_DIM = 256

# Predict the heatmaps with a transposed conv (doubles their size)
__C.KRCNN.USE_DECONV_OUTPUT = False

# Dilation of the keypoint head convs
__C.KRCNN.DILATION = 1

# Kernel size of every transposed conv of the head
__C.KRCNN.DECONV_KERNEL = 4

# Keypoints per instance in the dataset (17 for COCO)
__C.KRCNN.NUM_KEYPOINTS = -1

# Convs in the keypoint head
__C.KRCNN.NUM_STACKED_CONVS = 8

# Channels of those convs
__C.KRCNN.CONV_HEAD_DIM = 256

# Kernel size of those convs
__C.KRCNN.CONV_HEAD_KERNEL = 3
# Initialiser of the head weights: 'GaussianFill' or 'MSRAFill'
__C.KRCNN.CONV_INIT = 'GaussianFill'

# Suppress duplicates with object-keypoint-similarity NMS
__C.KRCNN.NMS_OKS = False

# Score given to each keypoint: 'bbox' (its box's score), 'logit' or 'prob'
__C.KRCNN.KEYPOINT_CONFIDENCE = 'bbox'

# RoI pooling of the keypoint head (see FAST_RCNN.ROI_XFORM_*)
__C.KRCNN.ROI_XFORM_METHOD = 'RoIAlign'
__C.KRCNN.ROI_XFORM_RESOLUTION = 7
__C.KRCNN.ROI_XFORM_SAMPLING_RATIO = 0

# Training on precomputed proposals (MODEL.FASTER_RCNN off), a minibatch whose sampled keypoint
# RoIs hold no more visible keypoints than this is not trained on: the next one is drawn instead
# (engine/trainer.py). Detectron's end-to-end path ignores it, and so does pydetectron (with a
# warning when it is set there).
__C.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH = 20

# Heatmaps are never resized below this side when decoding keypoints
__C.KRCNN.INFERENCE_MIN_SIZE = 0

# Weight of the keypoint loss; use 1.0 when normalising by visible keypoints,
# 4.0 otherwise
__C.KRCNN.LOSS_WEIGHT = 1.0

# Average the keypoint loss over the visible keypoints of the minibatch
# (True) or over every keypoint the minibatch could hold (False)
__C.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS = True


# ---------------------------------------------------------------------------- #
# R-FCN options
# ---------------------------------------------------------------------------- #
__C.RFCN = AttrDict()

# Side of the position-sensitive pooling grid
__C.RFCN.PS_GRID_SIZE = 3


# ---------------------------------------------------------------------------- #
# ResNet / ResNeXt options
# ---------------------------------------------------------------------------- #
__C.RESNETS = AttrDict()

# Groups of the 3x3 convs: 1 is ResNet, more is ResNeXt
__C.RESNETS.NUM_GROUPS = 1

# Channels per group in the first stage (res2)
__C.RESNETS.WIDTH_PER_GROUP = 64

# Put the stride of a downsampling block on its first 1x1 conv (MSRA ResNet
# weights) rather than on the 3x3 conv (Caffe2 / Torch ResNeXt weights)
__C.RESNETS.STRIDE_1X1 = True

# Residual block function ('bottleneck_transformation', or the GroupNorm
# 'bottleneck_gn_transformation')
__C.RESNETS.TRANS_FUNC = 'bottleneck_transformation'
# Stem (conv1 + pool1) function ('basic_bn_stem' or 'basic_gn_stem')
__C.RESNETS.STEM_FUNC = 'basic_bn_stem'
# Projection shortcut function ('basic_bn_shortcut' or 'basic_gn_shortcut')
__C.RESNETS.SHORTCUT_FUNC = 'basic_bn_shortcut'

# Dilation of res5 (1: none; 2 keeps res5 at stride 16)
__C.RESNETS.RES5_DILATION = 1

# Freeze the backbone up to and including this stage: 0 freezes nothing,
# 2..5 freeze conv1 through res<N>; conv1 and the frozen-BN affines always are
__C.RESNETS.FREEZE_AT = 2

# ImageNet weights of the backbone (Detectron .pkl or torch .pth); a relative
# path is taken from ROOT_DIR. Used when MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS
__C.RESNETS.IMAGENET_PRETRAINED_WEIGHTS = ''

# GroupNorm instead of frozen BN (AffineChannel) in the backbone
__C.RESNETS.USE_GN = False

# Blocks in res2..res5 of the bodies whose depth is not in their name
# ('ResNet.ResNet_conv5_body', 'FPN.fpn_ResNet_conv5_body'); (3, 4, 6, 3) is
# ResNet-50. The ResNet50/101/152 bodies ignore it (pydetectron addition)
__C.RESNETS.BLOCK_COUNTS = (3, 4, 6, 3)

# Channels out of the stem (conv1 + pool1); Detectron hardcodes 64
# (pydetectron addition: smaller makes a thin backbone, e.g. for the CPU
# quick start; Detectron's weight files need 64)
__C.RESNETS.STEM_OUT_DIM = 64

# Channels out of res2, doubling in each later stage (res5: 8x); Detectron
# hardcodes 256 (pydetectron addition, like STEM_OUT_DIM)
__C.RESNETS.RES2_OUT_DIM = 256


# ---------------------------------------------------------------------------- #
# VGG16 options (Detectron.pytorch)
# ---------------------------------------------------------------------------- #
__C.VGG16 = AttrDict()

# ImageNet weights of VGG16 backbones, like RESNETS.IMAGENET_PRETRAINED_WEIGHTS
__C.VGG16.IMAGENET_PRETRAINED_WEIGHTS = ''


# ---------------------------------------------------------------------------- #
# GroupNorm options
# ---------------------------------------------------------------------------- #
__C.GROUP_NORM = AttrDict()
# Channels per group (-1: use NUM_GROUPS instead)
__C.GROUP_NORM.DIM_PER_GP = -1
# Number of groups (-1: use DIM_PER_GP instead)
__C.GROUP_NORM.NUM_GROUPS = 32
# Epsilon added to the variance
__C.GROUP_NORM.EPSILON = 1e-5


# ---------------------------------------------------------------------------- #
# Misc options
# ---------------------------------------------------------------------------- #

# GPUs used for training and testing; the schedules of configs/ assume 8
__C.NUM_GPUS = 1

# Caffe2 all-reduce choice; kept so Detectron YAML loads
__C.USE_NCCL = False

# When > 0, boxes equal after multiplying by DEDUP_BOXES are treated as
# duplicates (1/16 suits stride-16 feature maps)
__C.DEDUP_BOXES = 1. / 16.

# Clip predicted log-scale deltas (dw, dh) so exp() cannot overflow: a 16-pixel
# anchor may grow to 1000 pixels at most
__C.BBOX_XFORM_CLIP = math.log(1000. / 16.)

# Per-channel pixel means in BGR order, shape (1, 1, 3), subtracted from the
# images; no division by a std (Detectron's convention)
__C.PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])

# Shape buckets: pad every input blob's height and width further, with the
# same zeros as the FPN stride padding (im_info keeps the true size), up to
# the next multiple of this many pixels or the next of the scale rule's
# largest sides (the SCALES and MAX_SIZE padded to the stride), whichever is
# smaller, so that the input shapes repeat: CUDA graphs (--compile
# reduce-overhead / max-autotune) need a few static shapes. 0 = off
# (Detectron's blobs). A multiple of FPN.COARSEST_STRIDE with FPN. The extra
# padding adds anchors, so RPN proposals may differ from Detectron's: set by
# --shape_buckets or by a CUDA-graph --compile mode, never by default
# (pydetectron addition)
__C.SHAPE_BUCKETS = 0

# Seed of the random generators
__C.RNG_SEED = 3

# A tiny number used to avoid divisions by zero
__C.EPS = 1e-14

# Root of the pydetectron checkout (relative weights paths start here)
__C.ROOT_DIR = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))

# Directory where outputs (checkpoints, logs, detections) are written
__C.OUTPUT_DIR = 'Outputs'

# Where datasets live (data/coco, ...) and generated data sets are written
__C.DATA_DIR = osp.join(__C.ROOT_DIR, 'data')

# Where derived data (cached roidbs, ...) are stored
__C.CACHE_DIR = osp.join(__C.DATA_DIR, 'cache')

# MATLAB executable for the official PASCAL VOC evaluation
__C.MATLAB = 'matlab'

# Caffe2 memory optimisations; kept so Detectron YAML loads
__C.MEMONGER = True
__C.MEMONGER_SHARE_ACTIVATIONS = False

# Save images with the detections drawn during testing
__C.VIS = False

# Score a detection needs to be drawn
__C.VIS_TH = 0.9

# Results a test run is expected to reach: a list of
# [dataset, task, metric, value], e.g.
# [['coco_2017_val', 'box', 'AP', 0.37]]; checked with the tolerances below
__C.EXPECTED_RESULTS = []
__C.EXPECTED_RESULTS_RTOL = 0.1
__C.EXPECTED_RESULTS_ATOL = 0.005
# An expected value may also be [mean, std]: the result must then lie within
# mean +/- EXPECTED_RESULTS_SIGMA_TOL * std
__C.EXPECTED_RESULTS_SIGMA_TOL = 4
# Address to mail when an expected result is missed
__C.EXPECTED_RESULTS_EMAIL = ''

# Local cache for weights and proposals referred to by URL
__C.DOWNLOAD_CACHE = '/tmp/detectron-download-cache'

# [Deprecated, Detectron.pytorch] RoI pooling of the old single-head code:
# 'crop', 'align' or 'pool', and its output side
__C.POOLING_MODE = 'crop'
__C.POOLING_SIZE = 7

# RoICrop: crop at twice the size and max-pool down by 2 (Detectron.pytorch)
__C.CROP_RESIZE_WITH_MAX_POOL = True

# [Inferred; set by the tools] Run on CUDA devices
__C.CUDA = False

# Extra checks and logging for debugging
__C.DEBUG = False

# ---------------------------------------------------------------------------- #
# Cluster options
# ---------------------------------------------------------------------------- #
__C.CLUSTER = AttrDict()

# Running under a cluster scheduler (Detectron; kept so its YAML loads)
__C.CLUSTER.ON_CLUSTER = False


# ============================================================================ #
# Validation tables (the compatibility tables are in config_compat)
# ============================================================================ #

# Mask/keypoint heads that reuse the box head's res5 stage (MODEL.SHARE_RES5).
_SHARE_RES5_HEADS = {'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare'}

# Allowed values of string keys with a fixed set of choices.
_CHOICES = {
    'SOLVER.TYPE': ('SGD', 'Adam'),
    'SOLVER.LR_POLICY': ('step', 'steps_with_decay', 'steps_with_lrs',
                         'steps_with_relative_lrs', 'cosine_decay', 'cosine',
                         'exp_decay'),
    'SOLVER.WARM_UP_METHOD': ('constant', 'linear'),
    'FAST_RCNN.ROI_XFORM_METHOD': ('RoIPoolF', 'RoIAlign', 'RoICrop'),
    'MRCNN.ROI_XFORM_METHOD': ('RoIPoolF', 'RoIAlign', 'RoICrop'),
    'KRCNN.ROI_XFORM_METHOD': ('RoIPoolF', 'RoIAlign', 'RoICrop'),
    'MRCNN.CONV_INIT': ('GaussianFill', 'MSRAFill'),
    'KRCNN.CONV_INIT': ('GaussianFill', 'MSRAFill'),
    'KRCNN.KEYPOINT_CONFIDENCE': ('bbox', 'logit', 'prob'),
    'RPN.CLS_ACTIVATION': ('sigmoid', 'softmax'),
    'TEST.SOFT_NMS.METHOD': ('linear', 'gaussian', 'hard'),
    'TEST.BBOX_VOTE.SCORING_METHOD': ('ID', 'TEMP_AVG', 'AVG', 'IOU_AVG',
                                      'GENERALIZED_AVG', 'QUASI_SUM'),
    'TEST.BBOX_AUG.SCORE_HEUR': ('ID', 'AVG', 'UNION'),
    'TEST.BBOX_AUG.COORD_HEUR': ('ID', 'AVG', 'UNION'),
    'TEST.MASK_AUG.HEUR': ('SOFT_AVG', 'SOFT_MAX', 'LOGIT_AVG'),
    'TEST.KPS_AUG.HEUR': ('HM_AVG', 'HM_MAX'),
    'POOLING_MODE': ('crop', 'align', 'pool'),
}

# Tuple keys that also accept one bare string (made a one-tuple), since
# `--set TRAIN.DATASETS coco_2017_train` is the natural thing to type.
_STR_TUPLE_KEYS = {'TRAIN.DATASETS', 'TEST.DATASETS',
                   'TRAIN.PROPOSAL_FILES', 'TEST.PROPOSAL_FILES'}


# Pristine defaults, for reset_cfg(); taken after all keys are defined.
_DEFAULT_CFG = copy.deepcopy(__C)


# ============================================================================ #
# Merging
# ============================================================================ #

def merge_cfg_from_file(cfg_filename):
    """Merge the YAML file `cfg_filename` into the global config."""
    if not osp.isfile(cfg_filename):
        raise FileNotFoundError(
            'config file not found: {}'.format(cfg_filename))
    with open(cfg_filename, 'r') as f:
        text = f.read()
    try:
        loaded = load_cfg(text)
    except yaml.YAMLError as e:
        loaded = _load_repaired(text, cfg_filename, e)
    if loaded is None:  # an empty file changes nothing
        return
    if not isinstance(loaded, dict):
        raise ConfigValueError(
            'config file {} must hold a mapping of keys, got {}'.format(
                cfg_filename, type(loaded).__name__))
    if is_detectron_pytorch_config(loaded):
        _apply_detectron_pytorch_defaults(loaded, cfg_filename)
    _merge_a_into_b(AttrDict(loaded), __C, source=cfg_filename)


def _apply_detectron_pytorch_defaults(loaded, source):
    """Give a Detectron.pytorch YAML file that project's defaults for the keys
    it leaves unset (and that still hold Detectron's default here)."""
    changed = []
    for full_key, value in DETECTRON_PYTORCH_DEFAULTS.items():
        section, _, leaf = full_key.rpartition('.')
        in_file = loaded.get(section, {}) if section else loaded
        if isinstance(in_file, dict) and leaf in in_file:
            continue
        parent = _get_key(__C, section) if section else __C
        if parent[leaf] == _get_key(_DEFAULT_CFG, full_key):
            parent[leaf] = value
            changed.append('{} {!r}'.format(full_key, value))
    if changed:
        logger.info('%s is a Detectron.pytorch config: its defaults apply: %s',
                    source, ', '.join(changed))


# Detectron's second name for it
cfg_from_file = merge_cfg_from_file


def _load_repaired(text, cfg_filename, error):
    """The YAML `text` that failed to parse with `error`, read after re-indenting the keys
    written at column 0 inside a section (config_compat.repair_unindented_keys), with a warning
    naming them; otherwise ConfigValueError with the parser's first line."""
    repaired = repair_unindented_keys(text, set(__C.keys()))
    if repaired is not None:
        try:
            loaded = load_cfg(repaired[0])
        except yaml.YAMLError:
            loaded = None
        if loaded is not None:
            for line, key in repaired[1]:
                logger.warning('%s line %d: key %s is not indented under its section; read as '
                               'if it were (fix the file)', cfg_filename, line, key)
            return loaded
    mark = getattr(error, 'problem_mark', None)
    where = ' (line {})'.format(mark.line + 1) if mark is not None else ''
    problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
    raise ConfigValueError('config file {} is not valid YAML{}: {}'.format(
        cfg_filename, where, problem)) from error


def merge_cfg_from_cfg(cfg_other):
    """Merge another config (an AttrDict or nested dict) into the global one."""
    if not isinstance(cfg_other, dict):
        raise ConfigTypeError(
            'merge_cfg_from_cfg expects an AttrDict or dict, got {}'.format(
                type(cfg_other).__name__))
    _merge_a_into_b(AttrDict(cfg_other), __C, source='<merged cfg>')


def merge_cfg_from_list(cfg_list):
    """Merge ['FULL.KEY', value, ...] pairs (the tools' --set flag).

    String values go through `ast.literal_eval`, falling back to the string:
    `['TEST.NMS', '0.5', 'TRAIN.SCALES', '(500,)']`.
    """
    if len(cfg_list) % 2 != 0:
        raise ConfigValueError(
            'merge_cfg_from_list expects key/value pairs, got an odd number '
            'of items ({}): {}'.format(len(cfg_list), list(cfg_list)))
    source = '<command line --set>'
    for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
        if not isinstance(full_key, str):
            raise ConfigTypeError(
                'config keys must be strings, got {!r}'.format(full_key))
        if _key_is_deprecated(full_key):
            continue
        if full_key in _RENAMED_KEYS:
            _migrate_renamed_key(full_key, _decode_cfg_value(raw), source)
            continue
        d = __C
        parts = full_key.split('.')
        for i, subkey in enumerate(parts):
            if not isinstance(d, AttrDict) or subkey not in d:
                _raise_unknown_key(full_key, source)
            if i < len(parts) - 1:
                d = d[subkey]
        value = _decode_cfg_value(raw)
        value = _check_and_coerce_cfg_value_type(
            value, d[parts[-1]], full_key, source)
        if isinstance(value, AttrDict):
            _merge_a_into_b(value, d[parts[-1]], stack=parts, source=source)
        else:
            d[parts[-1]] = value


# Detectron's second name for it
cfg_from_list = merge_cfg_from_list


def _merge_a_into_b(a, b, stack=None, source='<cfg>'):
    """Merge config dict `a` into config dict `b`, overwriting `b`'s values.

    `a` may only name keys `b` has; `stack` is the key path down to here.
    """
    stack = list(stack or [])
    for k, v_ in a.items():
        full_key = '.'.join(stack + [str(k)])
        if k not in b:
            if _key_is_deprecated(full_key):
                continue
            if full_key in _RENAMED_KEYS:
                _migrate_renamed_key(
                    full_key, _decode_cfg_value(copy.deepcopy(v_)), source)
                continue
            _raise_unknown_key(full_key, source)
        v = _decode_cfg_value(copy.deepcopy(v_))
        v = _check_and_coerce_cfg_value_type(v, b[k], full_key, source)
        if isinstance(v, AttrDict):
            _merge_a_into_b(v, b[k], stack=stack + [k], source=source)
        else:
            b[k] = v


def _decode_cfg_value(v):
    """Turn a raw value (from YAML or the command line) into a Python one.

    Nested dicts become AttrDicts. A string is read as a Python literal when
    it is one ('(800,)', '0.5', 'True'); otherwise it stays a string (a YAML
    value such as `coco_2017_train` or `data/x.pkl` arrives unquoted).
    """
    if isinstance(v, dict):
        return AttrDict(v)
    if isinstance(v, np.generic):  # numpy scalars from Detectron's dumps
        return v.item()
    if not isinstance(v, str):
        return v
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return v


def _check_and_coerce_cfg_value_type(value_a, value_b, full_key, source):
    """Return `value_a` (replacing `value_b` at `full_key`) in the type of
    `value_b`, or raise ConfigTypeError when the types do not fit."""
    type_a, type_b = type(value_a), type(value_b)
    if full_key in FUNC_NAME_KEYS and isinstance(value_a, str):
        return canonical_func_name(value_a)
    if type_a is type_b:
        return value_a
    if isinstance(value_b, np.ndarray):
        try:
            arr = np.array(value_a, dtype=value_b.dtype)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.size == value_b.size:
            return arr.reshape(value_b.shape)
    elif isinstance(value_b, bool) or isinstance(value_a, bool):
        pass  # bool is an int subclass, but 1 for True is almost surely a slip
    elif isinstance(value_b, str):
        if isinstance(value_a, bytes):
            return value_a.decode('utf-8')
        if isinstance(value_a, (int, float)):
            # e.g. OUTPUT_DIR: 2018 arrives as an int
            return str(value_a)
    elif isinstance(value_b, float) and isinstance(value_a, int):
        return float(value_a)
    elif isinstance(value_b, tuple) and isinstance(value_a, list):
        return tuple(value_a)
    elif isinstance(value_b, list) and isinstance(value_a, tuple):
        return list(value_a)
    elif isinstance(value_b, tuple) and isinstance(value_a, str) \
            and full_key in _STR_TUPLE_KEYS:
        return (value_a, )
    elif isinstance(value_b, AttrDict) and isinstance(value_a, dict):
        return AttrDict(value_a)
    raise ConfigTypeError(
        'config key {} (from {}) expects {} like the default {!r}, but got '
        '{} {!r}'.format(full_key, source, type_b.__name__, value_b,
                         type_a.__name__, value_a))


def _key_is_deprecated(full_key):
    if full_key in _DEPRECATED_KEYS:
        logger.warning('Deprecated config key (ignored): %s', full_key)
        return True
    return False


def _migrate_renamed_key(full_key, value, source):
    """Move the value of renamed key `full_key` to its new key, or raise with
    the conversion hint when the value cannot be carried over."""
    new_key, note, convert = _RENAMED_KEYS[full_key]
    try:
        value = convert(value)
    except (ValueError, TypeError):
        raise ConfigKeyError(
            'config key {} (in {}) was renamed to {}; please update your '
            'config.{}'.format(full_key, source, new_key,
                               ' ' + note if note else '')) from None
    parent_key, _, leaf = new_key.rpartition('.')
    parent = _get_key(__C, parent_key) if parent_key else __C
    parent[leaf] = _check_and_coerce_cfg_value_type(
        value, parent[leaf], new_key, source)
    logger.warning('Config key %s (in %s) is now %s; took its value %r',
                   full_key, source, new_key, parent[leaf])


def _all_full_keys(d=None, prefix=''):
    d = __C if d is None else d
    keys = []
    for k, v in d.items():
        key = prefix + k
        keys.append(key)
        if isinstance(v, AttrDict):
            keys.extend(_all_full_keys(v, key + '.'))
    return keys


def _closest_key(full_key):
    """The valid key nearest to `full_key`, or None."""
    valid = _all_full_keys()
    match = difflib.get_close_matches(full_key, valid, n=1, cutoff=0.6)
    if match:
        return match[0]
    # Fall back to the last component, e.g. a key put in the wrong section
    last = full_key.rsplit('.', 1)[-1]
    by_last = {}
    for key in valid:
        by_last.setdefault(key.rsplit('.', 1)[-1], key)
    match = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
    return by_last[match[0]] if match else None


def _raise_unknown_key(full_key, source):
    suggestion = _closest_key(full_key)
    hint = ('; did you mean {}?'.format(suggestion) if suggestion
            else '; no similar key exists')
    raise ConfigKeyError(
        'unknown config key {} (in {}){}'.format(full_key, source, hint))


# ============================================================================ #
# Inference, validation, freezing
# ============================================================================ #

def assert_and_infer_cfg(cache_urls=True, make_immutable=True):
    """Finish the config: infer the derived keys, validate, then freeze.

    Call it once all merging is done. Infers RPN.RPN_ON (= MODEL.RPN_ONLY or
    MODEL.FASTER_RCNN), TEST.PRECOMPUTED_PROPOSALS and MODEL.SHARE_RES5;
    checks choices and obviously incompatible options (raising one
    ConfigValueError listing every problem) and the weights files named by
    TRAIN.WEIGHTS / TEST.WEIGHTS (FileNotFoundError); then, with
    `make_immutable`, freezes `cfg` so any later write raises.
    """
    __C.immutable(False)  # a second call re-infers and re-freezes
    # Values set by attribute (cfg.MODEL.CONV_BODY = ...) skip the merge's
    # normalisation; give them the canonical form too
    for key in FUNC_NAME_KEYS:
        section, leaf = key.split('.')
        __C[section][leaf] = canonical_func_name(__C[section][leaf])
    if __C.MODEL.RPN_ONLY or __C.MODEL.FASTER_RCNN:
        __C.RPN.RPN_ON = True
    if __C.RPN.RPN_ON or __C.RETINANET.RETINANET_ON:
        __C.TEST.PRECOMPUTED_PROPOSALS = False
    heads = set()
    if __C.MODEL.MASK_ON:
        heads.add(__C.MRCNN.ROI_MASK_HEAD)
    if __C.MODEL.KEYPOINTS_ON:
        heads.add(__C.KRCNN.ROI_KEYPOINTS_HEAD)
    if heads & _SHARE_RES5_HEADS:
        __C.MODEL.SHARE_RES5 = True
    freeze_problem = _reconcile_freeze_at(__C)

    problems = _find_problems(__C) + freeze_problem
    if problems:
        raise ConfigValueError(
            'invalid config:\n  - ' + '\n  - '.join(problems))
    _warn_ignored_keys(__C)
    if cache_urls:
        cache_cfg_urls()
    _check_weights_files()
    if make_immutable:
        __C.immutable(True)


def _reconcile_freeze_at(c):
    """TRAIN.FREEZE_AT (Detectron) and RESNETS.FREEZE_AT (Detectron.pytorch)
    name one setting: a non-default value in one is copied to the other.
    Returns the problem when both are set to different non-default values."""
    default = _DEFAULT_CFG.TRAIN.FREEZE_AT
    train, resnets = c.TRAIN.FREEZE_AT, c.RESNETS.FREEZE_AT
    if train != default and resnets != default and train != resnets:
        return ['TRAIN.FREEZE_AT ({}) and RESNETS.FREEZE_AT ({}) are the same '
                'setting (Detectron\'s and Detectron.pytorch\'s name); set one '
                'of them'.format(train, resnets)]
    value = train if train != default else resnets
    c.TRAIN.FREEZE_AT = c.RESNETS.FREEZE_AT = value
    return []


def _warn_ignored_keys(c):
    """Warn about each key of config_compat.IGNORED_KEYS set to a value other
    than its default: it is accepted so the YAML loads, and does nothing."""
    for full_key, why in sorted(IGNORED_KEYS.items()):
        value = _get_key(c, full_key)
        default = _get_key(_DEFAULT_CFG, full_key)
        if full_key == 'CACHE_DIR' or full_key == 'ROOT_DIR':
            # derived from ROOT_DIR at import: compare the values as paths
            if osp.abspath(str(value)) == osp.abspath(str(default)):
                continue
        elif value == default:
            continue
        logger.warning('Config key %s = %r has no effect in pydetectron (%s)',
                       full_key, value, why)
    _warn_inert_keys(c)


def _inert_key_reasons(c):
    """{key: why} of the keys that have an effect in some configurations but not in ``c``."""
    out = {}
    key = 'KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH'
    if not c.MODEL.KEYPOINTS_ON:
        out[key] = 'MODEL.KEYPOINTS_ON is off: there are no keypoint minibatches to check'
    elif c.RPN.RPN_ON:
        out[key] = ("end-to-end training (MODEL.FASTER_RCNN): Detectron drops a minibatch with "
                    "too few visible keypoints only when training on precomputed proposals; "
                    "its end-to-end proposal-labelling ops compute the count and ignore it, and "
                    "so does pydetectron")
    return out


def _warn_inert_keys(c):
    """Warn about each key set to a non-default value in a configuration where it does
    nothing (``_inert_key_reasons``)."""
    for full_key, why in sorted(_inert_key_reasons(c).items()):
        value = _get_key(c, full_key)
        if value != _get_key(_DEFAULT_CFG, full_key):
            logger.warning('Config key %s = %r has no effect in this configuration (%s)',
                           full_key, value, why)


def _find_problems(c):
    """Every invalid or contradictory setting of config `c`, as messages."""
    problems = []
    for full_key, choices in _CHOICES.items():
        value = _get_key(c, full_key)
        if value not in choices:
            problems.append('{} is {!r}; expected one of {}'.format(
                full_key, value, ', '.join(repr(x) for x in choices)))

    m = c.MODEL
    if m.MASK_ON and not c.MRCNN.ROI_MASK_HEAD:
        problems.append('MODEL.MASK_ON is set but MRCNN.ROI_MASK_HEAD '
                        'names no mask head')
    if m.KEYPOINTS_ON:
        if not c.KRCNN.ROI_KEYPOINTS_HEAD:
            problems.append('MODEL.KEYPOINTS_ON is set but '
                            'KRCNN.ROI_KEYPOINTS_HEAD names no keypoint head')
        if c.KRCNN.NUM_KEYPOINTS <= 0:
            problems.append('MODEL.KEYPOINTS_ON needs KRCNN.NUM_KEYPOINTS '
                            '> 0 (17 for COCO)')
        if c.KRCNN.HEATMAP_SIZE <= 0:
            problems.append('MODEL.KEYPOINTS_ON needs KRCNN.HEATMAP_SIZE > 0')
    if m.RPN_ONLY and (m.MASK_ON or m.KEYPOINTS_ON):
        problems.append('MODEL.RPN_ONLY cannot be combined with '
                        'MODEL.MASK_ON or MODEL.KEYPOINTS_ON')
    if m.LOAD_IMAGENET_PRETRAINED_WEIGHTS and \
            not c.RESNETS.IMAGENET_PRETRAINED_WEIGHTS:
        problems.append('MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is set but '
                        'RESNETS.IMAGENET_PRETRAINED_WEIGHTS is empty')
    if m.SHARE_RES5 and \
            c.FAST_RCNN.ROI_BOX_HEAD != 'ResNet.ResNet_roi_conv5_head':
        problems.append(
            'the mask/keypoint head {} shares res5 with the box head, which '
            'must then be ResNet.ResNet_roi_conv5_head (got {!r})'.format(
                sorted(_SHARE_RES5_HEADS)[0], c.FAST_RCNN.ROI_BOX_HEAD))

    fpn_body = m.CONV_BODY.startswith('FPN.')
    if (c.FPN.MULTILEVEL_ROIS or c.FPN.MULTILEVEL_RPN) and not c.FPN.FPN_ON:
        problems.append('FPN.MULTILEVEL_ROIS / FPN.MULTILEVEL_RPN need '
                        'FPN.FPN_ON')
    if m.CONV_BODY and fpn_body != c.FPN.FPN_ON:
        problems.append(
            'MODEL.CONV_BODY {!r} and FPN.FPN_ON {} disagree: FPN bodies '
            '(FPN.*) need FPN.FPN_ON: True, other bodies False'.format(
                m.CONV_BODY, c.FPN.FPN_ON))

    r = c.RETINANET
    if r.RETINANET_ON:
        if m.CONV_BODY and not c.FPN.FPN_ON:
            problems.append('RETINANET.RETINANET_ON needs an FPN body (FPN.FPN_ON: True, '
                            'MODEL.CONV_BODY FPN.*)')
        if m.FASTER_RCNN or m.RPN_ONLY or m.MASK_ON or m.KEYPOINTS_ON:
            problems.append('RETINANET.RETINANET_ON cannot be combined with MODEL.FASTER_RCNN, '
                            'RPN_ONLY, MASK_ON or KEYPOINTS_ON (RetinaNet detects boxes only)')
        if c.TEST.BBOX_AUG.ENABLED:
            problems.append('TEST.BBOX_AUG.ENABLED: Detectron has no test-time augmentation '
                            'for RetinaNet; turn it off')
        if r.SCALES_PER_OCTAVE < 1 or len(r.ASPECT_RATIOS) == 0 or r.NUM_CONVS < 0:
            problems.append('RETINANET.SCALES_PER_OCTAVE must be >= 1, ASPECT_RATIOS non-empty '
                            'and NUM_CONVS >= 0')
        if not 0.0 < r.PRIOR_PROB < 1.0:
            problems.append('RETINANET.PRIOR_PROB must lie in (0, 1)')
        if r.NEGATIVE_OVERLAP > r.POSITIVE_OVERLAP:
            problems.append('RETINANET.NEGATIVE_OVERLAP ({}) exceeds POSITIVE_OVERLAP '
                            '({})'.format(r.NEGATIVE_OVERLAP, r.POSITIVE_OVERLAP))
        if c.FPN.RPN_MIN_LEVEL > c.FPN.RPN_MAX_LEVEL:
            problems.append('FPN.RPN_MIN_LEVEL exceeds FPN.RPN_MAX_LEVEL')
    if m.NUM_CLASSES != -1 and m.NUM_CLASSES < 2:
        problems.append('MODEL.NUM_CLASSES is {}; it counts the background, '
                        'so it must be >= 2 (or -1 to take it from the '
                        'dataset)'.format(m.NUM_CLASSES))
    t = c.TRAIN
    if not 0.0 <= t.FG_FRACTION <= 1.0:
        problems.append('TRAIN.FG_FRACTION must lie in [0, 1]')
    if not 0.0 <= t.RPN_FG_FRACTION <= 1.0:
        problems.append('TRAIN.RPN_FG_FRACTION must lie in [0, 1]')
    if t.BG_THRESH_LO > t.BG_THRESH_HI:
        problems.append('TRAIN.BG_THRESH_LO ({}) exceeds TRAIN.BG_THRESH_HI '
                        '({})'.format(t.BG_THRESH_LO, t.BG_THRESH_HI))
    if t.ASPECT_CROPPING and not t.ASPECT_LO <= t.ASPECT_HI:
        problems.append('TRAIN.ASPECT_LO must not exceed TRAIN.ASPECT_HI')
    if t.IMS_PER_BATCH < 1:
        problems.append('TRAIN.IMS_PER_BATCH must be >= 1')
    if len(t.SCALES) == 0:
        problems.append('TRAIN.SCALES must list at least one scale')
    if c.RESNETS.FREEZE_AT not in (0, 2, 3, 4, 5):
        problems.append('RESNETS.FREEZE_AT is {}; expected 0, 2, 3, 4 or '
                        '5'.format(c.RESNETS.FREEZE_AT))

    s = c.SOLVER
    if s.LR_POLICY in ('steps_with_decay', 'steps_with_lrs',
                       'steps_with_relative_lrs'):
        steps = list(s.STEPS)
        if not steps or steps[0] != 0:
            problems.append('SOLVER.LR_POLICY {!r} needs SOLVER.STEPS to '
                            'start with 0, e.g. [0, 60000, 80000] (got '
                            '{})'.format(s.LR_POLICY, steps))
        elif steps != sorted(steps):
            problems.append('SOLVER.STEPS must be increasing (got '
                            '{})'.format(steps))
        if s.LR_POLICY != 'steps_with_decay' and len(s.LRS) != len(steps):
            problems.append('SOLVER.LRS needs one rate per entry of '
                            'SOLVER.STEPS ({} vs {})'.format(
                                len(s.LRS), len(steps)))
    return problems


def _get_key(c, full_key):
    for part in full_key.split('.'):
        c = c[part]
    return c


def _is_url(path):
    return isinstance(path, str) and '://' in path


def cache_cfg_urls():
    """Point URL-valued weights / proposal keys at their local copies in
    DOWNLOAD_CACHE when those exist. Never downloads: a URL with no cached
    copy is left for the tool that needs it."""
    def local(url):
        if not _is_url(url):
            return url
        # Detectron's cache layout: DOWNLOAD_CACHE/<path after the host>
        rel = url.split('://', 1)[1].split('/', 1)[-1]
        path = osp.join(__C.DOWNLOAD_CACHE, rel)
        return path if osp.isfile(path) else url

    __C.TRAIN.WEIGHTS = local(__C.TRAIN.WEIGHTS)
    __C.TEST.WEIGHTS = local(__C.TEST.WEIGHTS)
    __C.TRAIN.PROPOSAL_FILES = tuple(local(f)
                                     for f in __C.TRAIN.PROPOSAL_FILES)
    __C.TEST.PROPOSAL_FILES = tuple(local(f) for f in __C.TEST.PROPOSAL_FILES)


def _check_weights_files():
    for key in ('TRAIN.WEIGHTS', 'TEST.WEIGHTS'):
        path = _get_key(__C, key)
        if path and not _is_url(path) and not osp.exists(path):
            raise FileNotFoundError(
                '{} names a weights file that does not exist: {}'.format(
                    key, path))


def resolve_imagenet_pretrained_weights():
    """Absolute path of RESNETS.IMAGENET_PRETRAINED_WEIGHTS, checked to exist.

    The training tool calls this when it initialises the backbone from
    ImageNet (MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS and no checkpoint to
    resume). A relative path is taken from ROOT_DIR.
    """
    path = __C.RESNETS.IMAGENET_PRETRAINED_WEIGHTS
    if not path:
        raise ConfigValueError(
            'RESNETS.IMAGENET_PRETRAINED_WEIGHTS is empty; name the ImageNet '
            'weights file (e.g. data/pretrained_model/R-50.pkl)')
    if not osp.isabs(path):
        path = osp.join(__C.ROOT_DIR, path)
    if not osp.isfile(path):
        raise FileNotFoundError(
            'RESNETS.IMAGENET_PRETRAINED_WEIGHTS file not found: {} (get the '
            'ImageNet weights with tools/download_imagenet_weights.py, or set '
            'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False)'.format(path))
    return path


def reset_cfg():
    """Restore every default in place and make `cfg` mutable (for tests)."""
    __C.immutable(False)
    dict.clear(__C)
    dict.update(__C, copy.deepcopy(_DEFAULT_CFG))  # the defaults are mutable


# ============================================================================ #
# Helpers for the tools
# ============================================================================ #

def get_output_dir(datasets, training=True):
    """<OUTPUT_DIR>/<train|test>/<dataset[:dataset...]>/<MODEL.TYPE>, created.

    `datasets` is a dataset name or a tuple/list of names.
    """
    if isinstance(datasets, str):
        dataset_name = datasets
    elif isinstance(datasets, (tuple, list)) and \
            all(isinstance(d, str) for d in datasets):
        dataset_name = ':'.join(datasets)
    else:
        raise ConfigTypeError(
            'get_output_dir: datasets must be a string or a tuple/list of '
            'strings, got {!r}'.format(datasets))
    tag = 'train' if training else 'test'
    outdir = osp.join(__C.OUTPUT_DIR, tag, dataset_name, __C.MODEL.TYPE)
    os.makedirs(outdir, exist_ok=True)
    return outdir


def _to_plain(value):
    """AttrDicts, tuples and arrays as plain YAML-safe dicts and lists."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def dump_cfg(c=None):
    """The config `c` (default: the global one) as plain YAML text, which
    `merge_cfg_from_cfg(load_cfg(text))` reads back (tuples come back as
    tuples through the type coercion). For saving beside checkpoints."""
    return yaml.safe_dump(_to_plain(__C if c is None else c),
                          default_flow_style=None, sort_keys=True)
