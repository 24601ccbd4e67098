"""Checkpoints: round trip, atomic writes (a crash or kill -9 mid-write), newest-complete
lookup, architecture mismatch messages, and refusal of pickles that would run code."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from pydetectron.engine import checkpoint as ck

from _engine_fakes import FakeDetector, build

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.normpath(os.path.join(HERE, '..', '..', 'lib'))


def _trained(seed=0):
    model, opt, sched = build(seed)
    sched.set_lr_for_iter(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    return model, opt, sched


def test_round_trip_weights_only(tmp_path):
    model, opt, sched = _trained()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    path = ck.save_checkpoint(str(tmp_path), 4, model, opt, sched,
                              data_order={'seed': 3, 'start_iter': 10},
                              extra={'train_size': 100, 'batch_size': 2, 'cfg': 'A: 1\n'})
    assert path == os.path.join(str(tmp_path), 'ckpt', 'model_step4.pth')
    expected = (torch.rand(3), np.random.rand(2), random.random())

    ckpt = ck.load_checkpoint(path)
    assert ckpt['step'] == 4 and ckpt['train_size'] == 100 and ckpt['batch_size'] == 2
    assert ckpt['data_order'] == {'seed': 3, 'start_iter': 10} and ckpt['cfg'] == 'A: 1\n'
    model2, opt2, sched2 = build(seed=1)
    ck.load_model_state(model2, ckpt['model'])
    opt2.load_state_dict(ckpt['optimizer'])
    sched2.load_state_dict(ckpt['scheduler'])
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    p, p2 = model.conv1.weight, model2.conv1.weight
    assert torch.equal(opt.state[p]['momentum_buffer'], opt2.state[p2]['momentum_buffer'])
    assert sched2.cur_lr == sched.cur_lr
    ck.set_rng_states(ckpt['rng'])
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    model, opt, sched = _trained()
    good = ck.save_checkpoint(str(tmp_path), 1, model, opt, sched)

    def crashing_save(obj, f):
        f.write(b'PK\x03\x04 half a checkpoint')
        raise OSError('disk full (simulated)')
    monkeypatch.setattr(ck.torch, 'save', crashing_save)
    with pytest.raises(OSError, match='simulated'):
        ck.save_checkpoint(str(tmp_path), 2, model, opt, sched)
    names = sorted(os.listdir(tmp_path / 'ckpt'))
    assert names == ['model_step1.pth']          # no final file, temporary removed
    assert ck.find_latest_checkpoint(str(tmp_path)) == good
    assert ck.load_checkpoint(good)['step'] == 1


def test_kill_9_mid_write_keeps_previous(tmp_path):
    script = textwrap.dedent('''
        import sys, time
        sys.path[:0] = [{lib!r}, {here!r}]
        import torch
        from pydetectron.engine import checkpoint as ck
        from _engine_fakes import build
        model, opt, sched = build(0)
        ck.save_checkpoint({out!r}, 1, model, opt, sched)
        real_save = torch.save
        def slow_save(obj, f):
            f.write(b'PK\\x03\\x04' + b'x' * 4096)
            f.flush()
            print('WRITING', flush=True)
            time.sleep(60)
        ck.torch.save = slow_save
        ck.save_checkpoint({out!r}, 2, model, opt, sched)
    ''').format(lib=LIB, here=HERE, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == 'WRITING'
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    names = sorted(os.listdir(tmp_path / 'ckpt'))
    assert 'model_step1.pth' in names and 'model_step2.pth' not in names
    assert any(n.startswith('.model_step2.pth.tmp-') for n in names)   # the killed write
    latest = ck.find_latest_checkpoint(str(tmp_path))
    assert latest.endswith('model_step1.pth') and ck.load_checkpoint(latest)['step'] == 1
    # the next save clears the leftover
    model, opt, sched = build(0)
    ck.save_checkpoint(str(tmp_path), 3, model, opt, sched)
    assert sorted(os.listdir(tmp_path / 'ckpt')) == ['model_step1.pth', 'model_step3.pth']


def test_latest_skips_incomplete_and_orders_numerically(tmp_path):
    model, opt, sched = _trained()
    ck.save_checkpoint(str(tmp_path), 9, model, opt, sched)
    ck.save_checkpoint(str(tmp_path), 10, model, opt, sched)
    assert ck.find_latest_checkpoint(str(tmp_path)).endswith('model_step10.pth')
    # a truncated file under a final name (e.g. copied by hand) is skipped, not loaded
    with open(tmp_path / 'ckpt' / 'model_step11.pth', 'wb') as f:
        f.write(open(tmp_path / 'ckpt' / 'model_step10.pth', 'rb').read()[:1000])
    assert ck.find_latest_checkpoint(str(tmp_path)).endswith('model_step10.pth')
    with pytest.raises(ck.CheckpointError, match='incomplete'):
        ck.load_checkpoint(str(tmp_path / 'ckpt' / 'model_step11.pth'))
    assert ck.find_latest_checkpoint(str(tmp_path / 'nothing')) is None


def test_other_architecture_lists_mismatches(tmp_path):
    model, opt, sched = _trained()
    path = ck.save_checkpoint(str(tmp_path), 0, model, opt, sched)
    other = FakeDetector()
    other.cls_score = nn.Linear(16, 5)          # another NUM_CLASSES
    other.extra_head = nn.Conv2d(8, 8, 1)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model_state(other, ck.load_checkpoint(path)['model'], source=path)
    msg = str(e.value)
    assert 'shape mismatch: cls_score.weight checkpoint (3, 16) vs model (5, 16)' in msg
    assert 'missing in checkpoint: extra_head.weight (8, 8, 1, 1)' in msg
    assert path in msg


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, ('touch {}'.format(marker),))
    path = tmp_path / 'ckpt' / 'model_step0.pth'
    os.makedirs(path.parent)
    torch.save({'model': {'w': torch.zeros(1)}, 'step': Evil()}, str(path))
    with pytest.raises(ck.CheckpointError, match='weights_only'):
        ck.load_checkpoint(str(path))
    time.sleep(0.1)
    assert not marker.exists()


def test_missing_file_message(tmp_path):
    with pytest.raises(ck.CheckpointError, match='not found'):
        ck.load_checkpoint(str(tmp_path / 'nope.pth'))
