"""SIGTERM / SIGINT during a training process: the last finished step is saved, the process
exits non-zero with a message, and a resumed run ends exactly where an uninterrupted one does."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pydetectron.engine import checkpoint as ck

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.normpath(os.path.join(HERE, '..', '..', 'lib'))
SCRIPT = os.path.join(HERE, '_engine_fakes.py')


def run(*args, **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LIB, HERE]))
    return subprocess.Popen([sys.executable, SCRIPT] + [str(a) for a in args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def losses_of(stdout):
    line = [l for l in stdout.splitlines() if l.startswith('losses')][-1]
    return [float(v) for v in line.split()[1:]]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted 10-step run: its per-step losses and final weights."""
    out = tmp_path_factory.mktemp('ref')
    proc = run('--max_iter', 10, '--dump', out / 'ref.pth')
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return losses_of(stdout), torch.load(out / 'ref.pth', weights_only=True)


def interrupt(out_dir, sig):
    """Start a slow run, send ``sig`` during step 4's forward pass; (returncode, out, err)."""
    proc = run('--max_iter', 10, '--output_dir', out_dir, '--sleep', 0.2)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith('forward 5'):
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_last_finished_step_and_resume_matches(tmp_path, sig, reference):
    code, stdout, stderr = interrupt(tmp_path, sig)
    assert code == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert 'Training interrupted by {}: saved the last finished step'.format(name) in stderr
    steps = [s for s, _ in ck.list_checkpoints(str(tmp_path))]
    # the step running when the signal arrived (step 4) finished and was saved
    assert steps == [4] and 'model_step4.pth' in stderr
    assert losses_of(stdout) == reference[0][:5]
    latest = ck.find_latest_checkpoint(str(tmp_path))
    ckpt = ck.load_checkpoint(latest)
    assert ckpt['step'] == 4 and ckpt['data_order']['start_iter'] == 5
    if sig != signal.SIGTERM:
        return   # one resume is enough
    res = run('--max_iter', 10, '--output_dir', tmp_path, '--resume', latest,
              '--dump', tmp_path / 'resumed.pth')
    r_out, r_err = res.communicate(timeout=120)
    assert res.returncode == 0, r_err
    assert losses_of(stdout) + losses_of(r_out) == reference[0]      # bitwise, step by step
    resumed = torch.load(tmp_path / 'resumed.pth', weights_only=True)
    for k, v in reference[1].items():
        assert torch.equal(v, resumed[k]), k


def test_ctrl_c_to_the_process_group_with_loader_workers(tmp_path):
    """Ctrl-C reaches every process of the terminal's group, DataLoader workers included. The
    workers ignore it (they start with SIGINT ignored), the trainer stops after the step it is
    waiting data for, and saves it."""
    proc = run('--max_iter', 10, '--output_dir', tmp_path, '--workers', 1, '--load_sleep', 0.3,
               start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith('loading 4'):
                break
        os.killpg(proc.pid, signal.SIGINT)      # what the terminal does on Ctrl-C
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert 'Training interrupted by SIGINT: saved the last finished step' in stderr
    assert 'exited unexpectedly' not in stderr and 'KeyboardInterrupt' not in stderr
    steps = [s for s, _ in ck.list_checkpoints(str(tmp_path))]
    assert len(steps) == 1 and steps[0] in (3, 4)
    assert len(losses_of(stdout)) == steps[0] + 1
