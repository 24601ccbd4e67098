"""Every key of Detectron's config.py exists here with Detectron's default; the keys accepted only
so that YAML files load warn when set; the two families of YAML files get their own defaults.

Detectron's keys are read from ../shared/data/detectron_config_keys.json (extracted from
Detectron's own config.py), never from this project's list."""
import json
import logging
import math
import os

import numpy as np
import pytest

from pydetectron.core import config as config_module
from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                     merge_cfg_from_list)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.normpath(os.path.join(ROOT, '..', 'shared'))
KEYS_JSON = os.path.join(SHARED, 'data', 'detectron_config_keys.json')

# Keys whose default differs on purpose, with the reason.
DOCUMENTED_DIFFERENCES = {
    'ROOT_DIR': "Detectron computes it at import (its checkout); here it is this checkout",
    'OUTPUT_DIR': "Detectron.pytorch's user-facing layout: Outputs/<cfg>/<run> instead of /tmp",
}


@pytest.fixture(scope='module')
def detectron_keys():
    if not os.path.isfile(KEYS_JSON):
        pytest.skip('../shared/data/detectron_config_keys.json not present')
    with open(KEYS_JSON) as f:
        return json.load(f)


def _detectron_default(v):
    if isinstance(v, dict) and 'ndarray' in v:
        return np.array(v['ndarray'], dtype=v.get('dtype', 'float64'))
    if isinstance(v, dict) and 'tuple' in v:
        return tuple(v['tuple'])
    return v


def test_every_detectron_key_exists_with_its_default(fresh_cfg, detectron_keys):
    keys = detectron_keys['keys']
    assert len(keys) == 229
    missing, different = [], []
    for full_key, raw in keys.items():
        try:
            ours = config_module._get_key(fresh_cfg, full_key)
        except KeyError:
            missing.append(full_key)
            continue
        if full_key in DOCUMENTED_DIFFERENCES:
            continue
        theirs = _detectron_default(raw)
        if isinstance(theirs, np.ndarray):
            same = isinstance(ours, np.ndarray) and np.array_equal(ours, theirs)
        elif isinstance(theirs, float):
            same = isinstance(ours, float) and math.isclose(ours, theirs, rel_tol=1e-12)
        else:
            same = ours == theirs and type(ours) is type(theirs)
        if not same:
            different.append('{}: Detectron {!r}, here {!r}'.format(full_key, theirs, ours))
    assert missing == []
    assert different == []


def test_detectron_removed_and_renamed_keys_are_known(detectron_keys):
    for key in detectron_keys['deprecated']:
        assert key in config_module._DEPRECATED_KEYS, key
    for key, new in detectron_keys['renamed'].items():
        if key.startswith('EXAMPLE.'):
            continue
        new_key = new[0] if isinstance(new, list) else new
        assert config_module._RENAMED_KEYS[key][0] == new_key, key


def test_ignored_keys_warn_only_when_set(fresh_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger='pydetectron.core.config'):
        assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    assert 'has no effect' not in caplog.text
    merge_cfg_from_list(['TRAIN.GENERATE_PROPOSALS_ON_GPU', 'True', 'USE_NCCL', 'True',
                         'TEST.BBOX_VOTE.SCORING_METHOD_BETA', '2.0'])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='pydetectron.core.config'):
        assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    for key in ('TRAIN.GENERATE_PROPOSALS_ON_GPU', 'USE_NCCL',
                'TEST.BBOX_VOTE.SCORING_METHOD_BETA'):
        assert 'Config key {} '.format(key) in caplog.text
    # every ignored key is a real key
    for key in config_module.IGNORED_KEYS:
        config_module._get_key(fresh_cfg, key)


@pytest.mark.parametrize('train, resnets, expected', [
    (0, 2, 0), (2, 0, 0), (2, 2, 2), (5, 5, 5), (4, 2, 4)])
def test_train_freeze_at_is_resnets_freeze_at(fresh_cfg, train, resnets, expected):
    merge_cfg_from_list(['TRAIN.FREEZE_AT', train, 'RESNETS.FREEZE_AT', resnets])
    assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    assert fresh_cfg.TRAIN.FREEZE_AT == expected == fresh_cfg.RESNETS.FREEZE_AT


def test_train_freeze_at_contradiction_is_refused(fresh_cfg):
    merge_cfg_from_list(['TRAIN.FREEZE_AT', 0, 'RESNETS.FREEZE_AT', 4])
    with pytest.raises(config_module.ConfigValueError, match='TRAIN.FREEZE_AT'):
        assert_and_infer_cfg(cache_urls=False, make_immutable=False)


def _write(tmp_path, text, name='x.yaml'):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_detectron_pytorch_yaml_gets_its_defaults(fresh_cfg, tmp_path):
    merge_cfg_from_file(_write(tmp_path, "RESNETS:\n  IMAGENET_PRETRAINED_WEIGHTS: a.pth\n"))
    assert fresh_cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is True
    assert fresh_cfg.TRAIN.SNAPSHOT_ITERS == 20000


def test_detectron_pytorch_yaml_keeps_what_it_sets(fresh_cfg, tmp_path):
    merge_cfg_from_file(_write(tmp_path, "MODEL:\n  LOAD_IMAGENET_PRETRAINED_WEIGHTS: False\n"
                                         "TRAIN:\n  SNAPSHOT_ITERS: 7\n"))
    assert fresh_cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is False
    assert fresh_cfg.TRAIN.SNAPSHOT_ITERS == 7


def test_detectron_yaml_gets_detectron_defaults(fresh_cfg, tmp_path):
    merge_cfg_from_file(_write(tmp_path, "TRAIN:\n  WEIGHTS: ''\n  FREEZE_AT: 0\n"))
    assert fresh_cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is False
    assert fresh_cfg.TRAIN.SNAPSHOT_ITERS == 80000


def test_exp_decay_policy():
    from pydetectron.engine.lr_policy import get_lr_at_iter
    from pydetectron.utils.collections import AttrDict
    s = AttrDict(LR_POLICY='exp_decay', BASE_LR=0.02, GAMMA=0.01, MAX_ITER=1000,
                 WARM_UP_ITERS=0, WARM_UP_FACTOR=1.0, WARM_UP_METHOD='linear')
    # hand values: 0.02 * 0.01 ** (it / 1000)
    assert get_lr_at_iter(0, s) == pytest.approx(0.02, rel=1e-7)
    assert get_lr_at_iter(500, s) == pytest.approx(0.002, rel=1e-6)
    assert get_lr_at_iter(1000, s) == pytest.approx(0.0002, rel=1e-6)


def test_expected_results_mean_std_form(fresh_cfg):
    from pydetectron.datasets.task_evaluation import check_expected_results
    results = {'d': {'box': {'AP': 0.30}}}
    merge_cfg_from_list(['EXPECTED_RESULTS', [['d', 'box', 'AP', [0.31, 0.004]]]])
    assert check_expected_results(results) is True          # 0.31 - 4 * 0.004 = 0.294 < 0.30
    merge_cfg_from_list(['EXPECTED_RESULTS_SIGMA_TOL', 2])
    assert check_expected_results(results) is False         # 0.31 - 2 * 0.004 = 0.302 > 0.30


def test_class_specific_proposal_recall():
    from pydetectron.datasets.json_dataset_evaluator import evaluate_box_proposals
    # two objects of class 1 (one found exactly, one missed), one of class 2 found exactly
    entry = {
        'boxes': np.array([[0, 0, 9, 9], [50, 50, 59, 59], [100, 100, 109, 109],
                           [0, 0, 9, 9], [100, 100, 109, 109]], np.float32),
        'gt_classes': np.array([1, 1, 2, 0, 0]),
        'is_crowd': np.zeros(5, bool),
        'seg_areas': np.full(5, 100.0),
    }
    overall = evaluate_box_proposals(None, [entry], thresholds=[0.5])
    per_class = evaluate_box_proposals(None, [entry], thresholds=[0.5], class_specific=True)
    assert overall['ar'] == pytest.approx(2 / 3)
    assert per_class['ar'] == pytest.approx((0.5 + 1.0) / 2)


def test_freeze_conv_body_freezes_the_whole_body(fresh_cfg):
    from pydetectron.modeling.model_builder import Generalized_RCNN
    merge_cfg_from_file(os.path.join(config_module.__C.ROOT_DIR, 'configs', 'getting_started',
                                     'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml'))
    merge_cfg_from_list(['TRAIN.FREEZE_CONV_BODY', 'True'])
    assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    model = Generalized_RCNN()
    body = [p.requires_grad for p in model.Conv_Body.parameters()]
    heads = [p.requires_grad for n, p in model.named_parameters() if n.startswith('Box_')]
    assert body and not any(body)
    assert heads and all(heads)
