"""LR policies and warm-up against hand-computed values (Detectron's formulas)."""
import math

import numpy as np
import pytest

from pydetectron.engine import lr_policy


class S(dict):
    __getattr__ = dict.__getitem__


def solver(**kw):
    s = S(BASE_LR=0.02, LR_POLICY='steps_with_decay', GAMMA=0.1, STEP_SIZE=30, STEPS=[0, 60, 80],
          LRS=[], MAX_ITER=90, WARM_UP_ITERS=0, WARM_UP_FACTOR=1.0 / 3.0, WARM_UP_METHOD='linear')
    s.update(kw)
    return s


def f32(x):
    return float(np.float32(x))


@pytest.mark.parametrize('it,expected', [(0, 0.02), (59, 0.02), (60, 0.002), (79, 0.002),
                                         (80, 0.0002), (89, 0.0002), (200, 0.0002)])
def test_steps_with_decay(it, expected):
    # Detectron's docstring example: STEPS [0, 60, 80], BASE_LR 0.02, GAMMA 0.1
    assert lr_policy.get_lr_at_iter(it, solver()) == pytest.approx(expected, rel=1e-6)


def test_steps_with_lrs_and_relative_lrs():
    s = solver(LR_POLICY='steps_with_lrs', LRS=[0.02, 0.002, 0.0002])
    assert [lr_policy.get_lr_at_iter(i, s) for i in (0, 60, 85)] == \
        [f32(0.02), f32(0.002), f32(0.0002)]
    s = solver(LR_POLICY='steps_with_relative_lrs', LRS=[1, 0.1, 0.01])
    assert [lr_policy.get_lr_at_iter(i, s) for i in (59, 60, 80)] == \
        [f32(0.02), f32(0.002), f32(0.0002)]


def test_step_policy():
    s = solver(LR_POLICY='step', STEP_SIZE=30)
    assert [lr_policy.get_lr_at_iter(i, s) for i in (0, 29, 30, 61)] == \
        [f32(0.02), f32(0.02), f32(0.002), f32(0.02 * 0.01)]


@pytest.mark.parametrize('name', ['cosine', 'cosine_decay'])
def test_cosine(name):
    s = solver(LR_POLICY=name, MAX_ITER=100)
    assert lr_policy.get_lr_at_iter(0, s) == f32(0.02)
    assert lr_policy.get_lr_at_iter(50, s) == f32(0.01)          # cos(pi/2) = 0
    assert lr_policy.get_lr_at_iter(25, s) == f32(0.02 * 0.5 * (math.cos(math.pi / 4) + 1))
    assert lr_policy.get_lr_at_iter(100, s) == 0.0


def test_linear_warm_up():
    s = solver(WARM_UP_ITERS=500, WARM_UP_FACTOR=1.0 / 3.0, STEPS=[0, 60000], MAX_ITER=90000)
    # it=0: factor 1/3; it=250: 1/3 * 0.5 + 0.5 = 2/3; it=499: just below 1; it=500: 1
    assert lr_policy.get_lr_at_iter(0, s) == f32(0.02 / 3)
    assert lr_policy.get_lr_at_iter(250, s) == f32(0.02 * (1 / 3 * 0.5 + 0.5))
    assert lr_policy.get_lr_at_iter(499, s) == f32(0.02 * (1 / 3 * (1 / 500) + 499 / 500))
    assert lr_policy.get_lr_at_iter(500, s) == f32(0.02)


def test_constant_warm_up_and_decay_inside_warm_up():
    s = solver(WARM_UP_ITERS=70, WARM_UP_METHOD='constant', WARM_UP_FACTOR=0.1)
    assert lr_policy.get_lr_at_iter(10, s) == f32(0.002)
    # the policy already decayed at 60, warm-up still multiplies (Detectron's order)
    assert lr_policy.get_lr_at_iter(65, s) == f32(0.0002)
    assert lr_policy.get_lr_at_iter(70, s) == f32(0.002)


def test_result_is_float32_rounded():
    lr = lr_policy.get_lr_at_iter(1, solver(WARM_UP_ITERS=3, BASE_LR=0.1))
    assert lr == float(np.float32(lr)) and lr != 0.1 * (1 / 3 * (2 / 3) + 1 / 3)


def test_bad_settings_name_the_key():
    with pytest.raises(KeyError, match='SOLVER.LR_POLICY'):
        lr_policy.get_lr_at_iter(0, solver(LR_POLICY='poly'))
    with pytest.raises(KeyError, match='SOLVER.WARM_UP_METHOD'):
        lr_policy.get_lr_at_iter(0, solver(WARM_UP_ITERS=5, WARM_UP_METHOD='exp'))
    with pytest.raises(ValueError, match='SOLVER.STEPS must start at 0'):
        lr_policy.get_lr_at_iter(0, solver(STEPS=[10, 20]))
