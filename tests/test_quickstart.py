"""The CPU quick start: its configs build small models that learn, and ``demo/run_demo.sh`` runs
train_net_step.py -> test_net.py -> infer_simple.py end to end (a few steps, not the full run)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from pydetectron.core.config import assert_and_infer_cfg, cfg, merge_cfg_from_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK_CFG = 'configs/getting_started/shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml'
KEYPOINT_CFG = 'configs/getting_started/keypoints_shapes_e2e_keypoint_rcnn_R-FPN-thin_gn_cpu.yaml'


# every test starts from the default cfg and leaves the global cfg as it found it (conftest)
pytestmark = pytest.mark.usefixtures("fresh_cfg")


def _load(path):
    merge_cfg_from_file(os.path.join(REPO, path))
    assert_and_infer_cfg()
    from pydetectron.modeling.model_builder import Generalized_RCNN
    return Generalized_RCNN()


def _shapes_minibatch(dataset, seed=0):
    """One training minibatch (2 images) of a built-in shapes split, as the loader collates it."""
    from pydetectron.datasets.roidb import combined_roidb_for_training
    from pydetectron.roi_data.loader import build_train_loader
    roidb, ratio_list, ratio_index = combined_roidb_for_training((dataset,), ())
    loader = build_train_loader(roidb, ratio_list, ratio_index, 2, 1, 0, start_iter=0, seed=seed)
    batch = next(iter(loader))
    return {k: v[0] for k, v in batch.items()}  # one device


@pytest.mark.parametrize('path, heads', [(MASK_CFG, ('Mask_Head',)),
                                         (KEYPOINT_CFG, ('Keypoint_Head',))])
def test_configs_build_small_gn_models(path, heads):
    model = _load(path)
    assert cfg.TRAIN.DATASETS[0].startswith(os.path.basename(path).split('_e2e_')[0])
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params < 3e6  # the point of these configs: a model a CPU trains in minutes
    assert all(getattr(model, h) is not None for h in heads)
    # Trained from scratch: GroupNorm everywhere in the body, nothing frozen
    body = model.Conv_Body.conv_body
    assert isinstance(body.res1.conv1_norm, torch.nn.GroupNorm)
    assert all(p.requires_grad for p in model.parameters())


@pytest.fixture
def one_thread():
    # A model this small runs faster on one thread, and then does not slow down several times
    # when other jobs hold the other cores (OpenMP threads spin-waiting for each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('path, dataset, head_loss', [
    (MASK_CFG, 'shapes_train', 'loss_mask'), (KEYPOINT_CFG, 'keypoints_shapes_train', 'loss_kps')])
def test_config_learns_a_minibatch(one_thread, path, dataset, head_loss):
    """A few SGD steps on one minibatch lower its loss (the model, targets and losses of the quick
    start fit together; the full schedule is the demo's job)."""
    torch.manual_seed(0)
    model = _load(path)
    batch = _shapes_minibatch(dataset)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(8):
        losses = model(**batch)['losses']
        assert set(losses) >= {'loss_rpn_cls_fpn2', 'loss_cls', 'loss_bbox', head_loss}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


@pytest.mark.parametrize('config, dataset, tasks', [
    (None, 'shapes', ('box', 'mask')),  # the default config
    (KEYPOINT_CFG, 'keypoints_shapes', ('box', 'keypoint')),
])
def test_run_demo_end_to_end(tmp_path, config, dataset, tasks):
    """demo/run_demo.sh on a 4-step schedule: every stage runs on the dataset the config trains on;
    the APs and drawings come out."""
    out, infer_out = tmp_path / 'out', tmp_path / 'infer'
    env = dict(os.environ, DEMO_OUTPUT_DIR=str(out), DEMO_INFER_DIR=str(infer_out),
               PYTHON=sys.executable,
               DEMO_TRAIN_ARGS='--set SOLVER.MAX_ITER 4 SOLVER.WARM_UP_ITERS 2 SOLVER.STEPS [0]',
               DEMO_TEST_ARGS='--set TEST.DETECTIONS_PER_IM 5')
    env.pop('DEMO_DATASET', None)
    if config:
        env['DEMO_CFG'] = config
    else:
        env.pop('DEMO_CFG', None)
    proc = subprocess.run(['bash', 'demo/run_demo.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # Each command is printed before it runs
    for tool in ('tools/train_net_step.py', 'tools/test_net.py', 'tools/infer_simple.py'):
        assert any(line.startswith('+ ') and tool in line for line in log.splitlines()), tool
    assert any(line.startswith('+ ') and '--dataset ' + dataset + ' ' in line
               for line in log.splitlines() if 'train_net_step.py' in line), log[-2000:]
    printed = [line for line in log.splitlines() if line.startswith(dataset + '_val ')]
    assert [line.split()[1] for line in printed] == list(tasks), log[-2000:]
    # The printed APs are the ones test_net.py computed (its copy-paste summary)
    with open(out / 'test.log') as f:
        test_log = f.read()
    ap_lines = [line.split('copypaste: ')[1] for line in test_log.splitlines()
                if 'copypaste: ' in line]
    for task, line in zip(tasks, printed):
        assert line.startswith('%s_val %s AP: ' % (dataset, task))
        i = ap_lines.index('Task: ' + task)
        assert float(line.split(':')[1]) == float(ap_lines[i + 2].split(',')[0])
    assert sorted(os.path.basename(p) for p in glob.glob(str(out / 'ckpt' / '*.pth'))) == \
        ['model_step3.pth']
    drawings = sorted(glob.glob(str(infer_out / '*.jpg')))
    assert len(drawings) == 4
    with open(infer_out / 'detections.json') as f:
        assert len(json.load(f)['images']) == 4


def test_run_demo_fails_loudly(tmp_path):
    env = dict(os.environ, DEMO_OUTPUT_DIR=str(tmp_path / 'out'), PYTHON=sys.executable,
               DEMO_CFG=str(tmp_path / 'missing.yaml'))
    proc = subprocess.run(['bash', 'demo/run_demo.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and 'missing.yaml' in proc.stderr
    # A failing stage stops the demo with its exit status named
    env.update(DEMO_CFG=MASK_CFG, DEMO_TRAIN_ARGS='--set NO_SUCH.KEY 1')
    proc = subprocess.run(['bash', 'demo/run_demo.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert 'training failed (exit 2)' in proc.stderr
    assert 'NO_SUCH.KEY' in proc.stdout + proc.stderr
