"""Backward compatibility of the configuration system (`pydetectron.core.config`).

What lets older YAML files and Detectron's own configs load unchanged:

* the tables of keys Detectron removed (ignored with a warning) and renamed
  (the value moves to the new key, or merging raises with the hint), with
  the converters that carry a value over;
* the canonical function names of MODEL.CONV_BODY and the RoI head keys
  (`CANONICAL_FUNC_NAMES`, `canonical_func_name`), which accept Detectron's
  spellings ('FPN.add_fpn_ResNet50_conv5_body', 'head_builder.*', ...);
* `load_cfg`, the restricted YAML loader that also reads the config blocks
  Detectron dumps into weights files (AttrDict, tuples, numpy values) and
  refuses every other Python tag;
* the config error classes, which the helpers here raise.

`pydetectron.core.config` re-exports every public name of this module
(`from pydetectron.core.config import canonical_func_name` keeps working);
the merging code there consults the tables.
"""

import re

import numpy as np
import yaml

from pydetectron.utils.collections import AttrDict
from pydetectron.utils.errors import ConfigError

__all__ = ['ConfigKeyError', 'ConfigTypeError', 'ConfigValueError',
           'FUNC_NAME_KEYS', 'CANONICAL_FUNC_NAMES', 'canonical_func_name',
           'load_cfg', 'IGNORED_KEYS', 'DETECTRON_PYTORCH_KEYS',
           'DETECTRON_PYTORCH_DEFAULTS', 'is_detectron_pytorch_config',
           'repair_unindented_keys']


# ============================================================================ #
# Errors
# ============================================================================ #

# Here rather than in config.py because the helpers below raise them and
# config.py imports this module; it re-exports them, so code that catches
# pydetectron.core.config.ConfigKeyError (and the others) is unchanged.

class ConfigKeyError(ConfigError, KeyError):
    """An unknown or renamed config key."""

    def __str__(self):
        # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ''


class ConfigTypeError(ConfigError, ValueError, TypeError):
    """A config value whose type does not fit the key's default."""


class ConfigValueError(ConfigError, ValueError):
    """A config whose values are invalid or contradict each other."""


# ============================================================================ #
# Removed and renamed keys
# ============================================================================ #

# Keys that no longer exist; a YAML file setting them loads with a warning.
_DEPRECATED_KEYS = {
    'FINAL_MSG',
    'MODEL.DILATION',
    'ROOT_GPU_ID',
    'RPN.ON',
    'TRAIN.DROPOUT',
    'USE_GPU_NMS',
    'TEST.NUM_TEST_IMAGES',
    # Detectron.pytorch legacy keys with no effect
    'TRAIN.BBOX_NORMALIZE_TARGETS',
    'TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED',
    'TRAIN.BBOX_NORMALIZE_MEANS',
    'TRAIN.BBOX_NORMALIZE_STDS',
    'TRAIN.BBOX_INSIDE_WEIGHTS',
    'TRAIN.TRIM_HEIGHT',
    'TRAIN.TRIM_WIDTH',
    'PYTORCH_VERSION_LESS_THAN_040',
}

# Keys that were renamed: old key -> (new key, how to convert the value,
# converter). A value the converter can carry over is moved to the new key
# with a warning, so older Detectron YAML still loads; otherwise merging
# raises with the conversion hint.
def _same(v):
    return v


def _as_tuple(v):
    # Detectron's old single-string form joined several entries with ':'
    if isinstance(v, str):
        return tuple(x for x in v.split(':') if x)
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise ValueError(v)


def _single_scale(v):
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise ValueError(v)


_RENAMED_KEYS = {
    'MODEL.PS_GRID_SIZE': ('RFCN.PS_GRID_SIZE', '', _same),
    'MODEL.ROI_HEAD': ('FAST_RCNN.ROI_BOX_HEAD', '', _same),
    'MRCNN.MASK_HEAD_NAME': ('MRCNN.ROI_MASK_HEAD', '', _same),
    'RESNETS.IMAGENET_PRETRAINED': (
        'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS',
        'Name the weights file in RESNETS.IMAGENET_PRETRAINED_WEIGHTS.',
        _same),
    'TRAIN.DATASET': (
        'TRAIN.DATASETS',
        "Write a tuple: 'coco_2014_train' -> ('coco_2014_train',).",
        _as_tuple),
    'TRAIN.PROPOSAL_FILE': (
        'TRAIN.PROPOSAL_FILES',
        "Write a tuple: 'path/to/file' -> ('path/to/file',).", _as_tuple),
    'TEST.SCALES': (
        'TEST.SCALE',
        'Write one integer, e.g. (600,) -> 600; use TEST.BBOX_AUG.SCALES '
        'for more scales.', _single_scale),
    'TEST.DATASET': (
        'TEST.DATASETS',
        "Write a tuple: 'coco_2014_minival' -> ('coco_2014_minival',).",
        _as_tuple),
    'TEST.PROPOSAL_FILE': (
        'TEST.PROPOSAL_FILES',
        "Write a tuple: 'path/to/props.pkl' -> ('path/to/props.pkl',).",
        _as_tuple),
}

# Keys whose value names a function as 'module.function'; stored canonical.
FUNC_NAME_KEYS = (
    'MODEL.CONV_BODY',
    'FAST_RCNN.ROI_BOX_HEAD',
    'MRCNN.ROI_MASK_HEAD',
    'KRCNN.ROI_KEYPOINTS_HEAD',
)

# The functions the model builder provides, by key (canonical names).
CANONICAL_FUNC_NAMES = {
    'MODEL.CONV_BODY': (
        'ResNet.ResNet50_conv4_body',
        'ResNet.ResNet50_conv5_body',
        'ResNet.ResNet101_conv4_body',
        'ResNet.ResNet101_conv5_body',
        'ResNet.ResNet152_conv5_body',
        'ResNet.ResNet_conv5_body',
        'FPN.fpn_ResNet50_conv5_body',
        'FPN.fpn_ResNet101_conv5_body',
        'FPN.fpn_ResNet152_conv5_body',
        'FPN.fpn_ResNet_conv5_body',
        'FPN.fpn_ResNet50_conv5_P2only_body',
        'FPN.fpn_ResNet101_conv5_P2only_body',
        'FPN.fpn_ResNet152_conv5_P2only_body',
    ),
    'FAST_RCNN.ROI_BOX_HEAD': (
        'ResNet.ResNet_roi_conv5_head',
        'fast_rcnn_heads.roi_2mlp_head',
        'fast_rcnn_heads.roi_Xconv1fc_head',
        'fast_rcnn_heads.roi_Xconv1fc_gn_head',
    ),
    'MRCNN.ROI_MASK_HEAD': (
        'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare',
        'mask_rcnn_heads.mask_rcnn_fcn_head_v0up',
        'mask_rcnn_heads.mask_rcnn_fcn_head_v1up',
        'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs',
        'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn',
    ),
    'KRCNN.ROI_KEYPOINTS_HEAD': (
        'keypoint_rcnn_heads.roi_pose_head_v1convX',
    ),
}

# Old function names -> current ones (Detectron's name_compat idea). Applied
# after the module rename and the 'add_' strip below.
_RENAMED_FUNCS = {
    # Detectron dropped the 'ResNet_' prefix of the mask heads
    'mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs':
        'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs',
    'mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up':
        'mask_rcnn_heads.mask_rcnn_fcn_head_v1up',
    'mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0upshare':
        'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare',
    'mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0up':
        'mask_rcnn_heads.mask_rcnn_fcn_head_v0up',
}

# Old module names -> current ones.
_RENAMED_MODULES = {
    # Detectron moved the box heads out of head_builder
    'head_builder': 'fast_rcnn_heads',
}

# Package prefixes that may precede a module name in a function key.
_MODULE_PREFIXES = ('pydetectron.modeling.', 'detectron.modeling.',
                    'modeling.')


# ============================================================================ #
# Keys accepted and ignored
# ============================================================================ #

# Keys that exist so that Detectron's and Detectron.pytorch's YAML files load
# unchanged, but that change nothing here: key -> why. `assert_and_infer_cfg`
# logs a warning naming each one set to a value other than its default.
IGNORED_KEYS = {
    'DATA_LOADER.MINIBATCH_QUEUE_SIZE':
        "Caffe2 loader queue; the PyTorch loader prefetches by itself",
    'DATA_LOADER.BLOBS_QUEUE_CAPACITY':
        "Caffe2 loader queue; the PyTorch loader prefetches by itself",
    'MODEL.EXECUTION_TYPE': "Caffe2 net executor",
    'USE_NCCL': "Caffe2 all-reduce choice (DDP always uses NCCL on GPUs)",
    'MEMONGER': "Caffe2 memory optimiser",
    'MEMONGER_SHARE_ACTIVATIONS': "Caffe2 memory optimiser",
    'TRAIN.GENERATE_PROPOSALS_ON_GPU':
        "proposals are always generated on the model's device",
    'TEST.GENERATE_PROPOSALS_ON_GPU':
        "proposals are always generated on the model's device",
    'CLUSTER.ON_CLUSTER': "used by Detectron's Cityscapes evaluator only",
    'MATLAB': "used by Detectron's PASCAL VOC devkit evaluator only",
    'EXPECTED_RESULTS_EMAIL': "no mail is sent; failures are logged",
    'CACHE_DIR': "Detectron itself never reads it",
    'EPS': "Detectron itself never reads it",
    'RFCN.PS_GRID_SIZE': "no R-FCN model exists (nor in Detectron)",
    'DEBUG': "no debug mode",
    'TEST.BBOX_VOTE.SCORING_METHOD_BETA':
        "Detectron's test code calls box voting with beta = 1.0 whatever "
        "this key says; so does pydetectron",
    'POOLING_MODE': "Detectron.pytorch's deprecated single-head RoI pooling "
                    "(FAST_RCNN/MRCNN/KRCNN.ROI_XFORM_METHOD decide)",
    'POOLING_SIZE': "Detectron.pytorch's deprecated single-head RoI pooling "
                    "(the *.ROI_XFORM_RESOLUTION keys decide)",
    'MODEL.UNSUPERVISED_POSE': "Detectron.pytorch experiment switch",
    'VGG16.IMAGENET_PRETRAINED_WEIGHTS': "no VGG16 bodies here",
    'MRCNN.MEMORY_EFFICIENT_LOSS':
        "the mask loss always reads the true class's channel only (same "
        "values)",
}


# ============================================================================ #
# The two families of YAML files
# ============================================================================ #

# Keys that only Detectron.pytorch's config has: a YAML file setting one of
# them is that project's, and loads with that project's defaults
# (DETECTRON_PYTORCH_DEFAULTS) for the keys it leaves unset. Every other
# YAML file gets Detectron's defaults (this config's own).
DETECTRON_PYTORCH_KEYS = (
    'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS',
    'RESNETS.IMAGENET_PRETRAINED_WEIGHTS',
    'VGG16.IMAGENET_PRETRAINED_WEIGHTS',
    'RESNETS.FREEZE_AT',
    'RESNETS.USE_GN',
    'TRAIN.ASPECT_CROPPING',
    'SOLVER.TYPE',
    'POOLING_MODE',
    'CROP_RESIZE_WITH_MAX_POOL',
)

# Detectron.pytorch's defaults that differ from Detectron's.
DETECTRON_PYTORCH_DEFAULTS = {
    # 36 of its 38 baseline YAMLs rely on it to start from ImageNet weights
    'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS': True,
    'TRAIN.SNAPSHOT_ITERS': 20000,
}


def is_detectron_pytorch_config(loaded):
    """True when the YAML mapping `loaded` (a dict of sections) sets a key
    only Detectron.pytorch has (`DETECTRON_PYTORCH_KEYS`)."""
    if not isinstance(loaded, dict):
        return False
    for key in DETECTRON_PYTORCH_KEYS:
        section, _, leaf = key.rpartition('.')
        d = loaded.get(section) if section else loaded
        if isinstance(d, dict) and leaf in d:
            return True
    return False


def repair_unindented_keys(text, top_level_keys):
    """Re-indent a key written at column 0 inside a section, or return None.

    Two of Detectron.pytorch's own YAML files have such a line::

        RESNETS:
        IMAGENET_PRETRAINED_WEIGHTS: 'data/pretrained_model/X-101-64x4d.pkl'
          STRIDE_1X1: False

    which no YAML parser reads. A column-0 line `KEY: value` whose KEY is not a top-level key of
    the config (`top_level_keys`), placed between a section header and that section's indented
    keys, is indented like the key after it. Returns (repaired text, [(line number, key)]) or
    None when there is nothing of the kind.
    """
    lines = text.split('\n')
    fixed = []

    def indent_of(line):
        return len(line) - len(line.lstrip(' '))

    def next_content(i):
        for j in range(i + 1, len(lines)):
            stripped = lines[j].strip()
            if stripped and not stripped.startswith('#'):
                return lines[j]
        return ''

    section_open = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        if indent_of(line) > 0:
            continue
        key = stripped.split(':', 1)[0].strip()
        nxt = next_content(i)
        if (section_open and ':' in stripped and key not in top_level_keys and
                indent_of(nxt) > 0):
            lines[i] = ' ' * indent_of(nxt) + stripped
            fixed.append((i + 1, key))
            continue
        # a header such as 'RESNETS:' (nothing after the colon) opens a section
        section_open = stripped.endswith(':') or bool(
            re.match(r'^[A-Z0-9_]+:\s*(#.*)?$', stripped))
    if not fixed:
        return None
    return '\n'.join(lines), fixed


# ============================================================================ #
# Function names
# ============================================================================ #

def canonical_func_name(name):
    """Canonical 'module.function' form of a function-name config value.

    Accepts Detectron's names: strips a leading 'add_' from the function
    ('FPN.add_fpn_ResNet50_conv5_body' -> 'FPN.fpn_ResNet50_conv5_body'),
    maps renamed modules ('head_builder.add_roi_2mlp_head' ->
    'fast_rcnn_heads.roi_2mlp_head') and renamed functions
    ('mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs' ->
    'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs'), and drops a package
    prefix ('detectron.modeling.FPN.x' -> 'FPN.x'). Empty stays empty.
    """
    if not isinstance(name, str):
        raise ConfigTypeError(
            'function name must be a string, got {!r} ({})'.format(
                name, type(name).__name__))
    name = name.strip()
    if not name:
        return ''
    for prefix in _MODULE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    module, _, func = name.rpartition('.')
    module = _RENAMED_MODULES.get(module, module)
    if func.startswith('add_'):
        func = func[len('add_'):]
    name = '{}.{}'.format(module, func) if module else func
    return _RENAMED_FUNCS.get(name, name)


# ============================================================================ #
# Restricted YAML loading
# ============================================================================ #

def _numpy_attr(*names):
    """First numpy object found under one of the dotted `names` (numpy moved
    `numpy.core` to `numpy._core` in 2.0)."""
    import importlib
    for name in names:
        module, _, attr = name.rpartition('.')
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError('none of {} found'.format(names))


class _CfgLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads the config blocks Detectron writes
    with yaml.dump (into weights files): AttrDict objects, tuples and numpy
    scalars / arrays. Any other Python object tag is refused."""


def _allowed_python_names():
    scalar = ('numpy._core.multiarray.scalar', 'numpy.core.multiarray.scalar')
    recon = ('numpy._core.multiarray._reconstruct',
             'numpy.core.multiarray._reconstruct')
    return {
        'numpy.core.multiarray.scalar': lambda: _numpy_attr(*scalar),
        'numpy._core.multiarray.scalar': lambda: _numpy_attr(*scalar),
        'numpy.core.multiarray._reconstruct': lambda: _numpy_attr(*recon),
        'numpy._core.multiarray._reconstruct': lambda: _numpy_attr(*recon),
        'numpy.dtype': lambda: np.dtype,
        'numpy.ndarray': lambda: np.ndarray,
    }


def _construct_python_object(loader, suffix, node, new):
    """Build an allowed object from a !!python/object/{new,apply}:NAME tag."""
    if suffix.endswith('collections.AttrDict'):
        # Detectron dumps AttrDict with its items under 'dictitems'
        fields = loader.construct_mapping(node, deep=True) \
            if isinstance(node, yaml.MappingNode) else {}
        return AttrDict(fields.get('dictitems', {}))
    factories = _allowed_python_names()
    if suffix not in factories:
        raise yaml.constructor.ConstructorError(
            None, None, 'refusing to build Python object {!r} while loading '
            'a config'.format(suffix), node.start_mark)
    target = factories[suffix]()
    if isinstance(node, yaml.SequenceNode):
        args, kwds, state = loader.construct_sequence(node, deep=True), {}, {}
    else:
        fields = loader.construct_mapping(node, deep=True)
        args = fields.get('args', [])
        kwds = fields.get('kwds', {})
        state = fields.get('state', {})
    obj = target.__new__(target, *args, **kwds) if new and \
        isinstance(target, type) else target(*args, **kwds)
    if state:
        obj.__setstate__(state)
    return obj


_CfgLoader.add_constructor(
    'tag:yaml.org,2002:python/tuple',
    lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_CfgLoader.add_multi_constructor(
    'tag:yaml.org,2002:python/object/new:',
    lambda loader, suffix, node: _construct_python_object(
        loader, suffix, node, new=True))
_CfgLoader.add_multi_constructor(
    'tag:yaml.org,2002:python/object/apply:',
    lambda loader, suffix, node: _construct_python_object(
        loader, suffix, node, new=False))


def _construct_python_name(loader, suffix, node):
    factories = _allowed_python_names()
    if suffix not in factories:
        raise yaml.constructor.ConstructorError(
            None, None, 'refusing to load Python name {!r} while loading a '
            'config'.format(suffix), node.start_mark)
    return factories[suffix]()


_CfgLoader.add_multi_constructor('tag:yaml.org,2002:python/name:',
                                 _construct_python_name)


def load_cfg(cfg_to_load):
    """Parse a config YAML string (or open file) into Python objects.

    Safe: reads plain YAML and the Python tags Detectron writes into weights
    files (AttrDict, tuples, numpy values), and nothing else. Returns what
    the YAML holds (an AttrDict/dict for a config); merge it with
    `merge_cfg_from_cfg`.
    """
    if hasattr(cfg_to_load, 'read'):
        cfg_to_load = cfg_to_load.read()
    if isinstance(cfg_to_load, bytes):
        cfg_to_load = cfg_to_load.decode('utf-8')
    if not isinstance(cfg_to_load, str):
        raise ConfigTypeError(
            'load_cfg expects a YAML string or file, got {}'.format(
                type(cfg_to_load).__name__))
    return yaml.load(cfg_to_load, Loader=_CfgLoader)
