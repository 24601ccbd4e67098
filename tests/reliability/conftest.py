"""Real training runs shared by the reliability tests: ``tools/train_net_step.py`` on the shapes
dataset with the quick start's thin GN R-FPN Mask R-CNN, shrunk (64-pixel images, one image per
step, few RoIs) so that a step takes about a second on one CPU core."""
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, '..', '..'))
DRIVER = os.path.join(HERE, '_train_driver.py')
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')
MAX_ITER = 20      # --bs 1 doubles the config's schedule: MAX_ITER 10 -> 20 steps

TINY_SET = ['TRAIN.SCALES', '(64,)', 'TRAIN.MAX_SIZE', '96', 'TRAIN.BATCH_SIZE_PER_IM', '32',
            'TRAIN.RPN_PRE_NMS_TOP_N', '200', 'TRAIN.RPN_POST_NMS_TOP_N', '100',
            'SOLVER.WARM_UP_ITERS', '2', 'TRAIN.SNAPSHOT_ITERS', '1000']


def train_argv(output_dir, *extra, seed=3, max_iter=MAX_ITER // 2, steps='[0, 6]', sets=()):
    """Arguments of ``tools/train_net_step.py`` for the tiny shapes run."""
    return (['--dataset', 'shapes', '--cfg', THIN_CFG, '--no_cuda', '--bs', '1', '--nw', '0',
             '--disp_interval', '1000', '--seed', str(seed), '--output_dir', str(output_dir),
             '--skip-test']
            + list(extra)
            + ['--set', 'SOLVER.MAX_ITER', str(max_iter), 'SOLVER.STEPS', steps]
            + TINY_SET + list(sets))


def start(argv, driver_sleep=0.0, **popen):
    """The training tool in a subprocess (one torch thread: reproducible and fair to 2 cores);
    ``popen``: more ``subprocess.Popen`` arguments (e.g. ``start_new_session``)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    cmd = [sys.executable, DRIVER] + (['--driver_sleep', str(driver_sleep)] if driver_sleep
                                      else []) + [str(a) for a in argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def losses_of(stdout):
    """{step: loss} from the driver's ``step <step> <loss>`` lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith('step '):
            _, step, loss = line.split()
            out[int(step)] = float(loss)
    return out


def final_model(output_dir):
    from pydetectron.engine import checkpoint as ck
    latest = ck.find_latest_checkpoint(str(output_dir))
    return ck.load_checkpoint(latest)


def run_to_end(argv, timeout=300):
    proc = start(argv)
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return losses_of(stdout), stdout, stderr


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory):
    """An uninterrupted 20-step run with --seed 3: ({step: loss}, final checkpoint, its
    output directory)."""
    out = tmp_path_factory.mktemp('reference_run')
    losses, _, _ = run_to_end(train_argv(out))
    assert sorted(losses) == list(range(MAX_ITER))
    return losses, final_model(out), out


def assert_same_model(a, b):
    """Checkpoints hold the same step and bitwise-equal weights and optimizer state."""
    assert a['step'] == b['step']
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, v in sa[k].items():
            if torch.is_tensor(v):
                assert torch.equal(v, sb[k][name]), (k, name)
