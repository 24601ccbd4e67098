"""Detectron's learning-rate policies and warm-up (``detectron/utils/lr_policy.py``).

Every function takes the iteration and the solver options ``s`` (``cfg.SOLVER`` or any object
with the same attributes), so they can be used and tested without the global config.

Policies (``SOLVER.LR_POLICY``), for iteration ``it`` (0-indexed):
  'step'                     BASE_LR * GAMMA ** (it // STEP_SIZE)
  'steps_with_decay'         BASE_LR * GAMMA ** k, k = index of the last STEPS entry <= it
  'steps_with_lrs'           LRS[k]
  'steps_with_relative_lrs'  BASE_LR * LRS[k]
  'cosine_decay' ('cosine')  BASE_LR * 0.5 * (cos(pi * it / MAX_ITER) + 1)
  'exp_decay'                BASE_LR * exp(it / MAX_ITER * log(GAMMA)): GAMMA is the ratio of
                             the final rate to the first
STEPS must start at 0 (Detectron's assertion). During the first WARM_UP_ITERS iterations the
policy's LR is multiplied by the warm-up factor: WARM_UP_FACTOR ('constant') or
WARM_UP_FACTOR * (1 - a) + a with a = it / WARM_UP_ITERS ('linear'). The result is rounded to
float32, as Detectron feeds it to a float32 blob: equality tests on LRs (momentum correction,
logging) see the same values Detectron saw.
"""
import math

import numpy as np


def get_step_index(cur_iter, s):
    """Index k of the STEPS interval holding ``cur_iter`` (STEPS[k] <= cur_iter < STEPS[k+1])."""
    steps = list(s.STEPS)
    if not steps or steps[0] != 0:
        raise ValueError('SOLVER.STEPS must start at 0 (Detectron convention), got {}'.format(
            steps))
    steps.append(s.MAX_ITER)
    ind = 0
    for ind, step in enumerate(steps):
        if cur_iter < step:
            break
    return ind - 1


def lr_func_step(cur_iter, s):
    return s.BASE_LR * s.GAMMA ** (cur_iter // s.STEP_SIZE)


def lr_func_steps_with_decay(cur_iter, s):
    return s.BASE_LR * s.GAMMA ** get_step_index(cur_iter, s)


def lr_func_steps_with_lrs(cur_iter, s):
    return s.LRS[get_step_index(cur_iter, s)]


def lr_func_steps_with_relative_lrs(cur_iter, s):
    return s.BASE_LR * s.LRS[get_step_index(cur_iter, s)]


def lr_func_cosine_decay(cur_iter, s):
    iter_frac = float(cur_iter) / s.MAX_ITER
    return s.BASE_LR * 0.5 * (math.cos(math.pi * iter_frac) + 1.0)


def lr_func_exp_decay(cur_iter, s):
    # GAMMA is final / initial rate: the rate falls smoothly from BASE_LR to BASE_LR * GAMMA
    iter_frac = float(cur_iter) / s.MAX_ITER
    return s.BASE_LR * math.exp(iter_frac * math.log(s.GAMMA))


_POLICIES = {
    'step': lr_func_step,
    'steps_with_decay': lr_func_steps_with_decay,
    'steps_with_lrs': lr_func_steps_with_lrs,
    'steps_with_relative_lrs': lr_func_steps_with_relative_lrs,
    'cosine_decay': lr_func_cosine_decay,
    'cosine': lr_func_cosine_decay,  # the short name for Detectron's 'cosine_decay'
    'exp_decay': lr_func_exp_decay,
}


def get_lr_func(policy):
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy not in _POLICIES:
        raise KeyError('Unknown SOLVER.LR_POLICY {!r}; valid policies: {}'.format(
            policy, ', '.join(sorted(_POLICIES))))
    return _POLICIES[policy]


def get_warmup_factor(cur_iter, s):
    """Multiplier on the policy's LR at ``cur_iter`` (1.0 once warm-up is over)."""
    if cur_iter >= s.WARM_UP_ITERS:
        return 1.0
    method = s.WARM_UP_METHOD
    if isinstance(method, bytes):
        method = method.decode()
    if method == 'constant':
        return s.WARM_UP_FACTOR
    if method == 'linear':
        alpha = cur_iter / s.WARM_UP_ITERS
        return s.WARM_UP_FACTOR * (1 - alpha) + alpha
    raise KeyError("Unknown SOLVER.WARM_UP_METHOD {!r}; valid: 'constant', 'linear'".format(method))


def get_lr_at_iter(cur_iter, s):
    """The learning rate of iteration ``cur_iter``: policy times warm-up, rounded to float32."""
    lr = get_lr_func(s.LR_POLICY)(cur_iter, s)
    lr *= get_warmup_factor(cur_iter, s)
    return float(np.float32(lr))
