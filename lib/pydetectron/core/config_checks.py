"""Range checks of config values that would otherwise fail minutes later, deep in the data path or
a kernel (a scale of 0, a NaN learning rate, an NMS threshold of 2): the tools call
``check_config_values(cfg)`` right after ``assert_and_infer_cfg``, before the roidb or the model is
built. The checks of choices and contradictions live in ``config.assert_and_infer_cfg``.
"""
import math

import numpy as np

from pydetectron.core.config_compat import ConfigValueError

# key: (predicate, what was expected)
_POSITIVE_INT = (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0,
                 'an integer > 0')
_NON_NEGATIVE_INT = (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                     and v >= 0, 'an integer >= 0')
_FRACTION = (lambda v: _finite(v) and 0.0 <= v <= 1.0, 'a number in [0, 1]')
_IOU_THRESH = (lambda v: _finite(v) and 0.0 < v <= 1.0, 'a number in (0, 1]')
_NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, 'a finite number >= 0')
_POSITIVE = (lambda v: _finite(v) and v > 0, 'a finite number > 0')

_SCALAR_CHECKS = {
    'NUM_GPUS': _POSITIVE_INT,
    'TRAIN.MAX_SIZE': _POSITIVE_INT,
    'TRAIN.IMS_PER_BATCH': _POSITIVE_INT,
    'TRAIN.BATCH_SIZE_PER_IM': _POSITIVE_INT,
    'TRAIN.RPN_BATCH_SIZE_PER_IM': _POSITIVE_INT,
    'TRAIN.RPN_PRE_NMS_TOP_N': _POSITIVE_INT,
    'TRAIN.RPN_POST_NMS_TOP_N': _POSITIVE_INT,
    'TRAIN.RPN_NMS_THRESH': _IOU_THRESH,
    'TRAIN.FG_THRESH': _FRACTION,
    'TRAIN.SNAPSHOT_ITERS': _POSITIVE_INT,
    'TEST.SCALE': _POSITIVE_INT,
    'TEST.MAX_SIZE': _POSITIVE_INT,
    'TEST.IMS_PER_BATCH': _POSITIVE_INT,
    'TEST.NMS': _IOU_THRESH,
    'TEST.RPN_PRE_NMS_TOP_N': _POSITIVE_INT,
    'TEST.RPN_POST_NMS_TOP_N': _POSITIVE_INT,
    'TEST.RPN_NMS_THRESH': _IOU_THRESH,
    'TEST.DETECTIONS_PER_IM': _POSITIVE_INT,
    'TEST.SCORE_THRESH': _FRACTION,
    'SOLVER.BASE_LR': _NON_NEGATIVE,
    'SOLVER.MAX_ITER': _POSITIVE_INT,
    'SOLVER.GAMMA': _POSITIVE,
    'SOLVER.WEIGHT_DECAY': _NON_NEGATIVE,
    'SOLVER.MOMENTUM': _FRACTION,
    'SOLVER.WARM_UP_ITERS': _NON_NEGATIVE_INT,
    'SOLVER.WARM_UP_FACTOR': _NON_NEGATIVE,
    'DATA_LOADER.NUM_THREADS': _NON_NEGATIVE_INT,
}

# tuples of image sizes: every entry an integer > 0 (may be empty only where noted)
_SCALE_LISTS = {
    'TRAIN.SCALES': False,            # False: must not be empty
    'TEST.BBOX_AUG.SCALES': True,
    'TEST.MASK_AUG.SCALES': True,
    'TEST.KPS_AUG.SCALES': True,
}


def _finite(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def _get(c, full_key):
    node = c
    for part in full_key.split('.'):
        if not hasattr(node, 'get') or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def find_value_problems(c):
    """Messages for every config value outside its valid range."""
    problems = []
    for key, (ok, expected) in _SCALAR_CHECKS.items():
        v = _get(c, key)
        if v is not _MISSING and not ok(v):
            problems.append('{} is {!r}; expected {}'.format(key, v, expected))
    for key, may_be_empty in _SCALE_LISTS.items():
        v = _get(c, key)
        if v is _MISSING:
            continue
        values = list(v) if isinstance(v, (tuple, list)) else [v]
        if not values and not may_be_empty:
            problems.append('{} is empty; expected at least one image size > 0'.format(key))
        bad = [x for x in values if not _POSITIVE_INT[0](x)]
        if bad:
            problems.append('{} is {!r}; expected image sizes (integers > 0)'.format(
                key, tuple(values)))
    for aug in ('BBOX_AUG', 'MASK_AUG', 'KPS_AUG'):
        v = _get(c, 'TEST.{}.MAX_SIZE'.format(aug))
        if v is not _MISSING and not _POSITIVE_INT[0](v):
            problems.append('TEST.{}.MAX_SIZE is {!r}; expected an integer > 0'.format(aug, v))
    means = _get(c, 'PIXEL_MEANS')
    if means is not _MISSING:
        arr = np.asarray(means, dtype=np.float64) if _numeric_array(means) else None
        if arr is None or arr.size != 3 or not np.isfinite(arr).all():
            problems.append('PIXEL_MEANS is {!r}; expected 3 finite numbers (B, G, R)'.format(
                means.tolist() if hasattr(means, 'tolist') else means))
    bucket = _get(c, 'SHAPE_BUCKETS')
    if bucket is not _MISSING:
        stride = _shape_bucket_stride(c)
        if not _NON_NEGATIVE_INT[0](bucket) or bucket % stride:
            problems.append('SHAPE_BUCKETS is {!r}; expected 0 (off) or a multiple of {} > 0'
                            .format(bucket, 'FPN.COARSEST_STRIDE ({})'.format(stride)
                                    if stride > 1 else 'pixels'))
    steps = _get(c, 'SOLVER.STEPS')
    if steps is not _MISSING and any(not _NON_NEGATIVE_INT[0](s) for s in steps):
        problems.append('SOLVER.STEPS is {!r}; expected iteration numbers (integers >= 0)'
                        .format(tuple(steps)))
    return problems


def _shape_bucket_stride(c):
    """The stride blobs are padded to: FPN.COARSEST_STRIDE with FPN, else 1."""
    fpn_on, stride = _get(c, 'FPN.FPN_ON'), _get(c, 'FPN.COARSEST_STRIDE')
    if fpn_on is True and _POSITIVE_INT[0](stride):
        return int(stride)
    return 1


def _numeric_array(v):
    try:
        np.asarray(v, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False


def check_config_values(c=None):
    """Raise one ``ConfigValueError`` listing every value out of range (``c``: default ``cfg``)."""
    if c is None:
        from pydetectron.core.config import cfg as c
    problems = find_value_problems(c)
    if problems:
        raise ConfigValueError('invalid config values: ' + '; '.join(problems))
