"""Parameter groups, Detectron's MomentumSGD update and its momentum correction."""
import pytest
import torch
from torch import nn

from pydetectron.engine.optimizer import MomentumSGD, build_optimizer, get_param_groups
from pydetectron.engine.solver import LRScheduler, get_lr_change_ratio

from _engine_fakes import FakeDetector, solver_cfg


def test_param_groups_bias_gn_frozen():
    model = FakeDetector()
    groups = {g['name']: g for g in get_param_groups(model, solver_cfg(WEIGHT_DECAY_GN=0.123))}
    assert [g for g in groups] == ['nonbias', 'bias', 'gn']
    assert groups['nonbias']['param_names'] == ['conv1.weight', 'fc6.weight', 'cls_score.weight',
                                                'bbox_pred.weight']
    assert groups['bias']['param_names'] == ['conv1.bias', 'conv1_gn.bias', 'fc6.bias',
                                             'cls_score.bias', 'bbox_pred.bias']
    assert groups['gn']['param_names'] == ['conv1_gn.weight']
    # frozen parameters are in no group
    all_names = sum((g['param_names'] for g in groups.values()), [])
    assert 'res_frozen_s' not in all_names
    assert (groups['nonbias']['lr_mult'], groups['nonbias']['weight_decay']) == (1.0, 0.0005)
    assert (groups['bias']['lr_mult'], groups['bias']['weight_decay']) == (2.0, 0.0)
    assert (groups['gn']['lr_mult'], groups['gn']['weight_decay']) == (1.0, 0.123)


def test_param_groups_options():
    groups = get_param_groups(FakeDetector(), solver_cfg(BIAS_DOUBLE_LR=False,
                                                         BIAS_WEIGHT_DECAY=True))
    assert (groups[1]['lr_mult'], groups[1]['weight_decay']) == (1.0, 0.0005)


def test_bias_gets_twice_the_lr_and_no_decay():
    torch.manual_seed(0)
    model = FakeDetector()
    opt = build_optimizer(model, solver_cfg(WEIGHT_DECAY=0.1, WEIGHT_DECAY_GN=0.0))
    sched = LRScheduler(opt, solver_cfg(WARM_UP_ITERS=0, BASE_LR=0.5))
    sched.set_lr_for_iter(0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    after = dict(model.named_parameters())
    lr = 0.5
    # first step: V = lr * (g + wd * p), p -= V
    torch.testing.assert_close(after['fc6.bias'], before['fc6.bias'] - 2 * lr * 1.0)
    torch.testing.assert_close(after['fc6.weight'],
                               before['fc6.weight'] - lr * (1.0 + 0.1 * before['fc6.weight']))
    torch.testing.assert_close(after['conv1_gn.weight'], before['conv1_gn.weight'] - lr * 1.0)
    torch.testing.assert_close(after['res_frozen_s'], before['res_frozen_s'])


def test_momentum_sgd_hand_computed():
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = MomentumSGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        p.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
        opt.step()
    # step 1: g' = [0.51, 0.23], V = [0.051, 0.023], p = [0.949, -2.023]
    # step 2: g' = [0.50949, 0.22977], V = 0.9 V + 0.1 g' = [0.096849, 0.043677]
    torch.testing.assert_close(opt.state[p]['momentum_buffer'],
                               torch.tensor([0.096849, 0.043677], dtype=torch.float64))
    torch.testing.assert_close(p.detach(), torch.tensor([0.852151, -2.066677],
                                                        dtype=torch.float64))


def _pair(seed=0):
    torch.manual_seed(seed)
    a = nn.Linear(4, 3).double()
    b = nn.Linear(4, 3).double()
    b.load_state_dict(a.state_dict())
    return a, b


def _grads(model, k):
    g = torch.Generator().manual_seed(k)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def test_momentum_sgd_equals_torch_sgd_at_constant_lr():
    a, b = _pair()
    ours = MomentumSGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for k in range(5):
        _grads(a, k), _grads(b, k)
        ours.step(), ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize('scale_momentum', [True, False])
def test_momentum_correction_on_lr_drop(scale_momentum):
    """With the correction, Caffe2's form after an LR drop equals torch's SGD (whose buffer is in
    gradient units); without it, the old history is applied at the old LR's scale."""
    s = solver_cfg(BASE_LR=0.1, STEPS=[0, 3], GAMMA=0.1, MAX_ITER=6, WARM_UP_ITERS=0,
                   WEIGHT_DECAY=0.0, SCALE_MOMENTUM=scale_momentum)
    a, b = _pair()
    ours = MomentumSGD(a.parameters(), momentum=0.9)
    sched = LRScheduler(ours, s)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for it in range(6):
        prev_lr = sched.cur_lr
        buf_before = [ours.state[p]['momentum_buffer'].clone() for p in a.parameters()] \
            if it == 3 else None
        lr = sched.set_lr_for_iter(it)
        if it == 3:   # the 10x drop: V scaled by new / old exactly when SCALE_MOMENTUM
            assert lr == pytest.approx(0.01)
            expected_scale = lr / prev_lr if scale_momentum else 1.0
            for p, before in zip(a.parameters(), buf_before):
                torch.testing.assert_close(ours.state[p]['momentum_buffer'],
                                           before * expected_scale, rtol=1e-12, atol=0)
        for g in ref.param_groups:
            g['lr'] = lr
        _grads(a, it), _grads(b, it)
        ours.step(), ref.step()
    close = all(torch.allclose(pa, pb, rtol=1e-9, atol=1e-12)
                for pa, pb in zip(a.parameters(), b.parameters()))
    assert close == scale_momentum


def test_no_correction_below_threshold_or_from_zero():
    # Linear warm-up changes the LR by < 1.1x per iteration: Detectron leaves V alone; the first
    # LR (from the dummy 0) is never a correction.
    s = solver_cfg(BASE_LR=0.1, STEPS=[0], MAX_ITER=100, WARM_UP_ITERS=50)
    p = nn.Parameter(torch.ones(3))
    opt = MomentumSGD([p], momentum=0.9)
    calls = []
    opt.scale_momentum = lambda c: calls.append(c)
    sched = LRScheduler(opt, s)
    for it in range(60):
        sched.set_lr_for_iter(it)
    assert calls == []
    assert get_lr_change_ratio(0.0, 0.1) > 1e8   # huge, but cur_lr <= 1e-7 skips the correction
    assert sched.cur_lr == pytest.approx(0.1)


def test_scheduler_state_round_trip_and_group_lrs():
    s = solver_cfg(WARM_UP_ITERS=0, BASE_LR=0.2)
    model = FakeDetector()
    opt = build_optimizer(model, s)
    sched = LRScheduler(opt, s)
    sched.set_lr_for_iter(7)   # STEPS [0, 6, 9]: one decay
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.02, 0.04, 0.02])
    other = LRScheduler(build_optimizer(model, s), s)
    other.load_state_dict(sched.state_dict())
    assert other.cur_lr == sched.cur_lr and other.last_iter == 7
    assert [g['lr'] for g in other.optimizer.param_groups] == pytest.approx([0.02, 0.04, 0.02])


def test_adam_and_bad_type():
    model = FakeDetector()
    opt = build_optimizer(model, solver_cfg(), optimizer_type='Adam')
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 3
    sched = LRScheduler(opt, solver_cfg(WARM_UP_ITERS=0, STEPS=[0, 1], BASE_LR=0.1))
    sched.set_lr_for_iter(0)
    sched.set_lr_for_iter(1)   # a 10x change: no momentum correction for Adam, no error
    assert opt.param_groups[1]['lr'] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="'SGD' or 'Adam'"):
        build_optimizer(model, solver_cfg(), optimizer_type='RMSprop')
