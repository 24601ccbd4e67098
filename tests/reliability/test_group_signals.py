"""Issue 16, item 5: interrupts as schedulers send them. ``timeout``, Slurm and a terminal's
Ctrl-C signal the whole process group, DataLoader workers included. With ``--nw 2`` the run
must still save the last finished step and exit 143 / 130 (the workers ignore the signal and the
training process decides), and ``--resume`` must continue it exactly. A checkpoint folder that
cannot be written is one line naming it, and the previous checkpoint stays."""
import os
import signal
import time

import pytest

from conftest import MAX_ITER, assert_same_model, final_model, losses_of, run_to_end, start, \
    train_argv
from pydetectron.engine import checkpoint as ck


def _group_signal_after(argv, step, sig):
    """Run in a new session; once ``step`` has finished send ``sig`` to the whole group."""
    proc = start(argv, driver_sleep=0.5, start_new_session=True)
    lines = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith('step %d ' % step):
                os.killpg(proc.pid, sig)
                break
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, ''.join(lines) + stdout, stderr


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_group_signal_with_workers_saves_and_resumes(tmp_path, sig, reference_run):
    ref_losses, ref_final, _ = reference_run
    code, stdout, stderr = _group_signal_after(train_argv(tmp_path, '--nw', '2'), 5, sig)
    name = signal.Signals(sig).name
    assert code == 128 + sig, stderr[-3000:]
    assert 'Training interrupted by %s: saved the last finished step' % name in stderr, \
        stderr[-3000:]
    assert 'is killed by signal' not in stderr and 'Traceback' not in stderr, stderr[-3000:]
    first = losses_of(stdout)
    saved = [s for s, _ in ck.list_checkpoints(str(tmp_path))]
    assert saved == [max(first)] and max(first) in (5, 6)
    # Workers only read images: the data stream and the losses are those of --nw 0.
    assert first == {s: ref_losses[s] for s in first}
    if sig != signal.SIGTERM:
        return          # one resume is enough
    resumed, _, _ = run_to_end(train_argv(tmp_path, '--resume', '--nw', '2'))
    assert sorted(resumed) == list(range(max(first) + 1, MAX_ITER))
    assert {**first, **resumed} == ref_losses
    assert_same_model(final_model(tmp_path), ref_final)


def test_unwritable_checkpoint_folder_is_one_line_and_keeps_the_previous(tmp_path):
    """The ckpt folder turns into a file after the first snapshot (as root, permissions do not
    stop a write; a file where the folder should be does): the next snapshot fails with one
    line naming the folder; the first checkpoint is reported kept."""
    import torch
    from pydetectron.utils.errors import OutputError

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = ck.save_checkpoint(str(tmp_path / 'a'), 0, model, opt)
    # a full disk: torch.save fails with ENOSPC mid-write
    import errno

    def full_disk(obj, f):
        f.write(b'PK\x03\x04 partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    orig = ck.torch.save
    ck.torch.save = full_disk
    try:
        with pytest.raises(OutputError) as e:
            ck.save_checkpoint(str(tmp_path / 'a'), 1, model, opt)
    finally:
        ck.torch.save = orig
    msg = str(e.value)
    assert '\n' not in msg
    assert 'No space left on device' in msg and str(tmp_path / 'a' / 'ckpt') in msg
    assert 'the previous checkpoint %s is kept' % first in msg
    assert sorted(os.listdir(tmp_path / 'a' / 'ckpt')) == ['model_step0.pth']
    # a folder that cannot be created: a file stands where it should be
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'ckpt').write_text('not a folder')
    with pytest.raises(OutputError) as e:
        ck.save_checkpoint(str(tmp_path / 'b'), 3, model, opt)
    assert str(tmp_path / 'b' / 'ckpt') in str(e.value)
    assert 'no earlier checkpoint exists' in str(e.value)


# -- the trainer's last line of defence: a worker that died with the group ---------------------- #

_KILLED = 'DataLoader worker (pid 4242) is killed by signal: Terminated. '


def _engine_fakes():
    import sys
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'engine')
    if here not in sys.path:
        sys.path.insert(0, here)
    import _engine_fakes
    return _engine_fakes


def _fake_trainer(tmp_path, **kw):
    FakeLoader, build = _engine_fakes().FakeLoader, _engine_fakes().build
    from pydetectron.engine.trainer import Trainer
    model, opt, sched = build()
    make_loader = kw.pop('make_loader', lambda start: FakeLoader(seed=7, start_iter=start))
    return model, Trainer(model, opt, sched, make_loader, max_iter=12,
                          output_dir=str(tmp_path), data_order={'seed': 7, 'start_iter': 0},
                          progress=False, **kw)


@pytest.mark.parametrize('where', ['loader', 'after_update'])
def test_worker_killed_by_sigterm_saves_the_last_updated_step(tmp_path, where):
    """The DataLoader's "worker killed by signal: Terminated" (a worker that died with its
    process group before it could ignore the signal) ends as a SIGTERM interrupt with the last
    updated step saved -- also when it strikes after a step's update but before the loop has
    counted that step."""
    import torch
    from pydetectron.engine.interrupt import TrainingInterrupted
    FakeLoader = _engine_fakes().FakeLoader

    class DyingLoader:
        def __init__(self, start):
            self.inner = FakeLoader(seed=7, start_iter=start)

        def __iter__(self):
            for i, batch in enumerate(self.inner):
                if i == 5:
                    raise RuntimeError(_KILLED)
                yield batch

    class DyingStats:
        def IterTic(self):
            pass

        def UpdateIterStats(self, *a):
            pass

        def IterToc(self):
            if len(trainer.loss_history) == 4:      # step 3 has just been updated
                raise RuntimeError(_KILLED)

        def LogIterStats(self, *a):
            pass

    if where == 'loader':
        model, trainer = _fake_trainer(tmp_path, make_loader=DyingLoader)
        expected = 4              # steps 0..4 updated; the 6th batch never came
    else:
        model, trainer = _fake_trainer(tmp_path, stats=DyingStats())
        expected = 3
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train(0)
    assert e.value.exit_code == 143 and e.value.step == expected
    saved = ck.load_checkpoint(e.value.checkpoint)
    assert saved['step'] == expected and saved['data_order']['start_iter'] == expected + 1
    for k, v in model.state_dict().items():          # the live state is the saved one
        assert torch.equal(saved['model'][k], v), k


def test_other_failures_keep_their_traceback(tmp_path):
    """A bug (here a ValueError in the forward pass) is not turned into an interrupt."""
    model, trainer = _fake_trainer(tmp_path)

    def boom(call):
        if call == 3:
            raise ValueError('a bug')
    model.on_forward = boom
    with pytest.raises(ValueError, match='a bug'):
        trainer.train(0)
    assert ck.list_checkpoints(str(tmp_path)) == []
