"""The training loop on a fake model and loader: exact resume, iter_size accumulation, NaN stop,
snapshots, the model-output contract."""
import os
import signal

import pytest
import torch

from pydetectron.engine import checkpoint as ck
from pydetectron.engine.interrupt import TrainingInterrupted
from pydetectron.engine.trainer import Trainer, TrainingDiverged
from pydetectron.engine.training_stats import TrainingStats

from _engine_fakes import FakeLoader, build, make_batch, solver_cfg

SEED = 7


def make_trainer(model, opt, sched, out=None, iter_size=1, snapshot=0, data_order=None,
                 rng=None, stats=None, max_iter=12):
    return Trainer(model, opt, sched,
                   lambda start: FakeLoader(seed=SEED, start_iter=start),
                   max_iter=max_iter, iter_size=iter_size, output_dir=out,
                   snapshot_period=snapshot,
                   data_order=data_order or {'seed': SEED, 'start_iter': 0},
                   rng_states=rng, stats=stats, progress=False)


def resume(out, path, iter_size, max_iter=12, generator=False):
    """Fresh objects (another init) restored from ``path``, trained to the end."""
    model, opt, sched = build(model_seed=99)
    if generator:
        model.target_generator = torch.Generator().manual_seed(555)
    ckpt = ck.load_checkpoint(path)
    ck.load_model_state(model, ckpt['model'])
    opt.load_state_dict(ckpt['optimizer'])
    sched.load_state_dict(ckpt['scheduler'])
    t = make_trainer(model, opt, sched, out, iter_size, data_order=ckpt['data_order'],
                     rng=ckpt['rng'], max_iter=max_iter)
    t.train(ckpt['step'] + 1)
    return model, opt, t


def assert_same_state(m1, o1, m2, o2):
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    for (p1, p2) in zip(m1.parameters(), m2.parameters()):
        if p1.requires_grad:
            assert torch.equal(o1.state[p1]['momentum_buffer'], o2.state[p2]['momentum_buffer'])


@pytest.mark.parametrize('iter_size,stop_at_call,expect_step,generator', [
    (1, 6, 5, False),   # signal during step 5's only pass: the step finishes and is saved
    (2, 11, 4, False),  # signal during step 5's first of two passes: step 5 is abandoned
    (1, 6, 5, True),    # the model samples from its own target_generator too
])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, iter_size, stop_at_call,
                                                      expect_step, generator):
    # Reference: 12 uninterrupted steps through warm-up (4) and two LR drops (6, 9), each with
    # Detectron's momentum correction.
    model, opt, sched = build()
    if generator:
        model.target_generator = torch.Generator().manual_seed(1)
    ref = make_trainer(model, opt, sched, iter_size=iter_size)
    ref.train(0)

    m, o, s = build()
    if generator:
        m.target_generator = torch.Generator().manual_seed(1)
    t = make_trainer(m, o, s, str(tmp_path), iter_size)
    m.on_forward = lambda call: call == stop_at_call and t.interrupt.request(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        t.train(0)
    assert e.value.step == expect_step and e.value.exit_code == 128 + signal.SIGTERM
    path = e.value.checkpoint
    assert path.endswith('model_step%d.pth' % expect_step)
    assert ck.load_checkpoint(path)['data_order'] == {'seed': SEED,
                                                      'start_iter': (expect_step + 1) * iter_size}
    assert t.loss_history == ref.loss_history[:expect_step + 1]

    m2, o2, t2 = resume(str(tmp_path), path, iter_size, generator=generator)
    assert t.loss_history + t2.loss_history == ref.loss_history   # bitwise, step by step
    assert_same_state(model, opt, m2, o2)


def test_snapshots_and_final_checkpoint(tmp_path):
    m, o, s = build()
    make_trainer(m, o, s, str(tmp_path), snapshot=4, max_iter=10).train(0)
    assert [st for st, _ in ck.list_checkpoints(str(tmp_path))] == [3, 7, 9]
    final = ck.load_checkpoint(ck.find_latest_checkpoint(str(tmp_path)))
    assert final['step'] == 9 and final['iter_size'] == 1
    assert final['scheduler']['last_iter'] == 9
    assert not any(n.startswith('.') for n in os.listdir(tmp_path / 'ckpt'))


def test_iter_size_2_is_one_step_over_summed_gradients():
    s_cfg = solver_cfg(WARM_UP_ITERS=0)
    model, opt, sched = build(solver=s_cfg)
    ref_model, ref_opt, ref_sched = build(solver=s_cfg)
    steps = []
    real_step = opt.step
    opt.step = lambda *a: (steps.append(1), real_step(*a))[1]
    t = make_trainer(model, opt, sched, iter_size=2, max_iter=1)

    # Reference: the two minibatches' total losses summed, one backward, one update, with the
    # same random stream as the loop (forward 0 then forward 1).
    torch.manual_seed(1234)
    ref_model.train()
    total = 0
    for i in range(2):
        b = make_batch(SEED, i)
        out = ref_model(b['data'][0], b['im_info'][0], b['roidb'][0])
        total = total + sum(out['losses'].values())
    total.backward()
    ref_sched.set_lr_for_iter(0)
    ref_opt.step()

    torch.manual_seed(1234)
    t.rng_states = ck.get_rng_states()
    t.train(0)
    assert len(steps) == 1 and model.forward_calls == 2
    for (k, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    assert t.loss_history[0] == pytest.approx(float(total.detach()) / 2, rel=1e-6)


def test_nan_loss_stops_and_keeps_last_good_state(tmp_path):
    m, o, s = build()
    t = make_trainer(m, o, s, str(tmp_path), snapshot=2)
    m.nan_at_call = 4                       # the forward pass of step 3
    with pytest.raises(TrainingDiverged) as e:
        t.train(0)
    msg = str(e.value)
    assert 'loss_bbox' in msg and 'nan' in msg and 'step 3' in msg
    assert e.value.checkpoint.endswith('model_step2.pth')
    assert [st for st, _ in ck.list_checkpoints(str(tmp_path))] == [1, 2]
    saved = ck.load_checkpoint(e.value.checkpoint)
    # the saved state is the one after step 2, which is also the live state: no update of the
    # poisoned step happened
    for k, v in m.state_dict().items():
        assert torch.equal(saved['model'][k], v) and torch.isfinite(v).all(), k
    assert len(t.loss_history) == 3


def test_backward_is_queued_before_the_loss_values_are_read(monkeypatch):
    """One process, no minibatch validity flag: the values go to the host behind the backward
    pass (the device keeps working meanwhile), so every trainable parameter has its gradient
    when they are read -- and the values read are the step's losses."""
    from pydetectron.engine import trainer as trainer_mod
    m, o, s = build()
    seen = []

    class Recording(trainer_mod._HostCopy):
        def result(self):
            got = super().result()
            seen.append(([p.grad is not None for p in m.parameters() if p.requires_grad], got))
            return got
    monkeypatch.setattr(trainer_mod, '_HostCopy', Recording)
    t = make_trainer(m, o, s, max_iter=3)
    t.train(0)
    assert len(seen) == 3
    for grads, values in seen:
        assert grads and all(grads)
        assert len(values) == 3      # loss_cls, loss_bbox, accuracy_cls
    assert t.loss_history == pytest.approx([v[0] + v[1] for _, v in seen], rel=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_host_copy_of_cuda_values_after_more_queued_work():
    from pydetectron.engine.trainer import _HostCopy
    x = torch.arange(5, dtype=torch.float32, device='cuda') * 1.5
    pending = _HostCopy(x)
    assert pending.host.is_pinned()    # so the copy does not hold the host until it is done
    y = torch.randn(4096, 4096, device='cuda')
    for _ in range(3):
        y = y @ y                      # queued after the copy
    x.fill_(-1)                        # later work does not reach the copied values
    assert pending.result() == [0.0, 1.5, 3.0, 4.5, 6.0]


def test_model_without_losses_gets_a_clear_error():
    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, data, im_info, roidb=None):
            return {'rois': data.new_zeros(0, 5)}
    model = NoLoss()
    from pydetectron.engine.optimizer import build_optimizer
    from pydetectron.engine.solver import LRScheduler
    opt = build_optimizer(model, solver_cfg())
    t = make_trainer(model, opt, LRScheduler(opt, solver_cfg()), max_iter=1)
    with pytest.raises(RuntimeError, match="no losses in training mode.*rois"):
        t.train(0)


def test_stats_are_logged(capsys):
    m, o, s = build()
    lines = []
    stats = TrainingStats('run', 'fake.yaml', 12, log_period=5, write=lines.append)
    make_trainer(m, o, s, stats=stats).train(0)
    assert [l.splitlines()[0] for l in lines] == ['[run][fake.yaml][Step 1 / 12]',
                                                  '[run][fake.yaml][Step 6 / 12]',
                                                  '[run][fake.yaml][Step 11 / 12]',
                                                  '[run][fake.yaml][Step 12 / 12]']
    assert 'accuracy_cls' in lines[0] and 'loss_bbox' in lines[0] and 'lr: 0.003333' in lines[0]


def test_amp_bfloat16_on_cpu_trains():
    m, o, s = build()
    t = make_trainer(m, o, s, max_iter=3)
    t.amp = True
    seen = []
    m.on_forward = lambda call: seen.append(torch.get_autocast_dtype('cpu')
                                            if torch.is_autocast_enabled('cpu') else None)
    t.train(0)
    assert seen == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert len(t.loss_history) == 3 and all(v == v for v in t.loss_history)


@pytest.mark.cuda
@pytest.mark.parametrize('amp', [False, True])
def test_cuda_dataparallel_resume_equals_uninterrupted(tmp_path, amp):
    """The loop on one GPU through the dict-aware DataParallel, with and without bf16 autocast:
    an interrupted-and-resumed run equals the uninterrupted one."""
    from pydetectron.nn.data_parallel import DataParallel
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    def run(out=None, stop_at=None, ckpt=None):
        model, opt, sched = build(model_seed=0 if ckpt is None else 99)
        model.cuda()
        # the optimizer was built on CPU parameters: .cuda() moved them in place
        dp = DataParallel(model, device_ids=[0])
        rng = data_order = None
        start = 0
        if ckpt is not None:
            c = ck.load_checkpoint(ckpt)
            ck.load_model_state(model, c['model'])
            opt.load_state_dict(c['optimizer'])
            sched.load_state_dict(c['scheduler'])
            rng, data_order, start = c['rng'], c['data_order'], c['step'] + 1
        t = Trainer(dp, opt, sched, lambda s: FakeLoader(seed=SEED, start_iter=s), max_iter=10,
                    output_dir=out, device='cuda:0', amp=amp, rng_states=rng,
                    data_order=data_order or {'seed': SEED, 'start_iter': 0}, progress=False)
        dtypes = []
        model.on_forward = lambda call: (dtypes.append(torch.is_autocast_enabled('cuda')),
                                         stop_at and call == stop_at and
                                         t.interrupt.request(signal.SIGTERM))
        try:
            t.train(start)
        except TrainingInterrupted as e:
            return model, t, e.checkpoint, dtypes
        return model, t, None, dtypes

    torch.manual_seed(0)
    ref_model, ref, _, dtypes = run()
    assert all(d == amp for d in dtypes)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in ref_model.parameters())
    torch.manual_seed(0)
    _, first, path, _ = run(str(tmp_path), stop_at=4)
    resumed_model, second, _, _ = run(str(tmp_path), ckpt=path)
    assert first.loss_history + second.loss_history == ref.loss_history
    for (k, a), b in zip(ref_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
