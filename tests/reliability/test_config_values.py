"""Issue 16, item 1 (config values): values that would fail minutes later in the data path or a
kernel are rejected right after ``assert_and_infer_cfg``, all of them in one message naming each
key, its value and what was expected (``core/config_checks.py``)."""
import pytest

from pydetectron.core.config import cfg, merge_cfg_from_list
from pydetectron.core.config_checks import check_config_values, find_value_problems
from pydetectron.core.config_compat import ConfigValueError
from pydetectron.utils.errors import ConfigError


def test_defaults_and_every_shipped_config_pass(fresh_cfg):
    assert find_value_problems(cfg) == []


@pytest.mark.parametrize('key,value,expected', [
    ('TRAIN.SCALES', '(600, 0)', 'TRAIN.SCALES is (600, 0); expected image sizes'),
    ('TRAIN.SCALES', '()', 'TRAIN.SCALES is empty'),
    ('TRAIN.MAX_SIZE', '0', 'TRAIN.MAX_SIZE is 0; expected an integer > 0'),
    ('TEST.SCALE', '-800', 'TEST.SCALE is -800'),
    ('TEST.MAX_SIZE', '0', 'TEST.MAX_SIZE is 0'),
    ('TEST.BBOX_AUG.SCALES', '(400, -1)', 'TEST.BBOX_AUG.SCALES is (400, -1)'),
    ('TEST.NMS', '1.5', 'TEST.NMS is 1.5; expected a number in (0, 1]'),
    ('TEST.NMS', '0.0', 'TEST.NMS is 0.0'),
    ('TRAIN.RPN_NMS_THRESH', '-0.7', 'TRAIN.RPN_NMS_THRESH is -0.7'),
    ('TRAIN.FG_THRESH', '1.5', 'TRAIN.FG_THRESH is 1.5; expected a number in [0, 1]'),
    ('TRAIN.BATCH_SIZE_PER_IM', '0', 'TRAIN.BATCH_SIZE_PER_IM is 0'),
    ('TRAIN.RPN_POST_NMS_TOP_N', '0', 'TRAIN.RPN_POST_NMS_TOP_N is 0'),
    ('TEST.DETECTIONS_PER_IM', '0', 'TEST.DETECTIONS_PER_IM is 0'),
    ('TEST.SCORE_THRESH', '2.0', 'TEST.SCORE_THRESH is 2.0'),
    ('SOLVER.BASE_LR', 'float("nan")', None),
    ('SOLVER.BASE_LR', '-0.1', 'SOLVER.BASE_LR is -0.1; expected a finite number >= 0'),
    ('SOLVER.MAX_ITER', '0', 'SOLVER.MAX_ITER is 0'),
    ('SOLVER.GAMMA', '0.0', 'SOLVER.GAMMA is 0.0; expected a finite number > 0'),
    ('SOLVER.MOMENTUM', '1.5', 'SOLVER.MOMENTUM is 1.5'),
    ('SOLVER.WEIGHT_DECAY', '-1e-4', 'SOLVER.WEIGHT_DECAY is -0.0001'),
    ('TRAIN.SNAPSHOT_ITERS', '0', 'TRAIN.SNAPSHOT_ITERS is 0'),
    ('DATA_LOADER.NUM_THREADS', '-2', 'DATA_LOADER.NUM_THREADS is -2'),
])
def test_out_of_range_values_are_named(fresh_cfg, key, value, expected):
    if expected is None:
        # NaN cannot be written in a YAML literal the merge accepts: set it directly
        cfg.immutable(False)
        section, leaf = key.split('.')
        cfg[section][leaf] = float('nan')
        expected = 'SOLVER.BASE_LR is nan'
    else:
        merge_cfg_from_list([key, value])
    with pytest.raises(ConfigValueError) as e:
        check_config_values(cfg)
    assert expected in str(e.value) and '\n' not in str(e.value), str(e.value)
    assert isinstance(e.value, ConfigError)


def test_every_problem_in_one_message(fresh_cfg):
    merge_cfg_from_list(['TEST.SCALE', '0', 'TEST.NMS', '3.0'])
    with pytest.raises(ConfigValueError) as e:
        check_config_values(cfg)
    assert 'TEST.SCALE is 0' in str(e.value) and 'TEST.NMS is 3.0' in str(e.value)
