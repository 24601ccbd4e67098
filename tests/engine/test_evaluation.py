"""engine.evaluation (evaluation during and after training) and engine.run_folder (log.txt,
metrics.jsonl, classes.txt), tools/plot_metrics.py; and, slow, real shapes runs through
tools/train_net_step.py: AP at each period and at the end, and a run killed mid-way and resumed
writes the same metrics.jsonl as an uninterrupted one."""
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from argparse import Namespace

import numpy as np
import pytest
import torch

from pydetectron.engine import evaluation, run_folder

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')


# ------------------------------------------------------------------------------------------------
# Schedule, state restoring, records
# ------------------------------------------------------------------------------------------------

def test_periodic_schedule_includes_the_last_step():
    ev = evaluation.TrainingEvaluator(3, 8)
    assert [s for s in range(8) if ev.due(s)] == [2, 5, 7]
    assert not any(evaluation.TrainingEvaluator(0, 8).due(s) for s in range(8))


class _Recorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def _fake_inference(calls):
    def run_inference(args, model=None, **kw):
        # inference may switch modes and draw random numbers: neither may leak into training
        model.eval()
        calls.append((args.output_dir, torch.rand(1).item(), np.random.rand(), random.random()))
        return {'shapes_val': {'box': {'AP': 0.25 * len(calls), 'AP50': 0.5}}}
    return run_inference


def test_evaluation_leaves_training_state_and_records_results(tmp_path, monkeypatch):
    from pydetectron.engine import inference
    calls = []
    monkeypatch.setattr(inference, 'run_inference', _fake_inference(calls))
    model = torch.nn.Linear(2, 2)
    model.train()
    metrics = run_folder.MetricsFile(str(tmp_path))
    tb = _Recorder()
    ev = evaluation.TrainingEvaluator(2, 5, output_dir=str(tmp_path), metrics_file=metrics,
                                      tb_logger=tb)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    for step in range(5):
        ev.after_step(model, step)
    after = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    assert after == (torch.rand(1).item(), np.random.rand(), random.random())
    assert model.training
    assert [c[0] for c in calls] == [os.path.join(str(tmp_path), 'eval', 'iter_%d' % i)
                                     for i in (2, 4, 5)]
    records = run_folder.read_metrics(str(tmp_path))
    assert [(r['type'], r['iter'], r['results']['shapes_val']['box']['AP']) for r in records] \
        == [('eval', 2, 0.25), ('eval', 4, 0.5), ('eval', 5, 0.75)]
    assert ('eval/shapes_val/box/AP', 0.5, 3) in tb.scalars
    # the test after training reuses the evaluation of the last step
    assert ev.final(model, 4) == records[-1]['results'] and len(calls) == 3
    # ... and runs one when the last step was not evaluated
    ev2 = evaluation.TrainingEvaluator(0, 5, output_dir=str(tmp_path))
    ev2.final(model, 4)
    assert len(calls) == 4 and calls[-1][0].endswith('iter_5')


def test_catch_up_runs_a_missing_due_evaluation(tmp_path, monkeypatch):
    from pydetectron.engine import inference
    calls = []
    monkeypatch.setattr(inference, 'run_inference', _fake_inference(calls))
    info = Namespace(distributed=False, is_main_process=True)
    run = run_folder.RunFolder(str(tmp_path), 0)
    try:
        ev = evaluation.TrainingEvaluator(2, 6, output_dir=str(tmp_path),
                                          metrics_file=run.metrics)
        model = torch.nn.Linear(1, 1)
        evaluation.catch_up(ev, model, 2, run, info)      # step 2 (iter 3) is not due
        assert calls == []
        evaluation.catch_up(ev, model, 3, run, info)      # iter 4 due and missing: run it
        assert len(calls) == 1 and run.has_eval_record(4)
        evaluation.catch_up(ev, model, 3, run, info)      # present: not again
        assert len(calls) == 1 and ev.last_evaluated_step == 3
    finally:
        run.close()


def test_metrics_file_cut_back_on_resume(tmp_path):
    m = run_folder.MetricsFile(str(tmp_path))
    for it in range(1, 7):
        m.write({'type': 'train', 'iter': it, 'loss': float(it)})
    m.write({'type': 'eval', 'iter': 4, 'results': {'d': {'box': {'AP': float('nan')}}}})
    with open(m.path, 'a') as f:
        f.write('{"type": "train", "iter": 7, "lo')   # a line cut by a kill
    m.truncate_after(4)
    records = run_folder.read_metrics(m.path)
    assert [(r['type'], r['iter']) for r in records] == \
        [('train', 1), ('train', 2), ('train', 3), ('train', 4), ('eval', 4)]
    assert records[-1]['results']['d']['box']['AP'] is None   # NaN is written as null


def test_console_log_copies_logging_and_prints(tmp_path):
    from pydetectron.utils.logging import setup_logging
    saved = logging.root.handlers[:], logging.root.level
    try:
        setup_logging(__name__)
        log = run_folder.ConsoleLog(str(tmp_path))
        logging.getLogger('pydetectron.test').info('a log record')
        print('a printed line')
        log.close()
        print('after close')
    finally:
        logging.root.handlers[:] = saved[0]
        logging.root.setLevel(saved[1])
    with open(os.path.join(str(tmp_path), 'log.txt')) as f:
        text = f.read()
    assert 'INFO test_evaluation.py' in text and 'a log record' in text
    assert 'a printed line\n' in text and 'after close' not in text


def test_plot_metrics_draws_losses_and_ap(tmp_path, capsys):
    m = run_folder.MetricsFile(str(tmp_path))
    for it in (1, 2, 3, 4):
        m.write({'type': 'train', 'iter': it, 'lr': 0.01, 'loss': 4.0 / it, 'loss_cls': 1.0,
                 'loss_rpn_cls_fpn2': 0.25, 'loss_rpn_cls_fpn3': 0.5, 'accuracy_cls': 0.5})
    m.write({'type': 'eval', 'iter': 2, 'results': {'v': {'box': {'AP50': 0.5, 'AP50/cat': 1.0,
                                                                   'APl': -1}}}})
    m.write({'type': 'eval', 'iter': 4, 'results': {'v': {'box': {'AP50': 0.75}}}})
    losses, evals = run_folder.curves(run_folder.read_metrics(str(tmp_path)))
    assert losses['loss'] == ([1, 2, 3, 4], [4.0, 2.0, 4.0 / 3, 1.0])
    assert losses['loss_rpn_cls'] == ([1, 2, 3, 4], [0.75] * 4)   # FPN levels summed
    assert 'accuracy_cls' not in losses
    assert evals == {'v/box/AP50': ([2, 4], [0.5, 0.75])}
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import plot_metrics
    from pydetectron.engine.cli import run_tool
    assert run_tool(plot_metrics.main, [str(tmp_path), '--out_dir', str(tmp_path / 'plots')]) == 0
    for name in ('loss.png', 'ap.png'):
        with open(str(tmp_path / 'plots' / name), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    capsys.readouterr()
    assert run_tool(plot_metrics.main, [str(tmp_path / 'nothing')], prog='plot_metrics.py') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('plot_metrics.py: error:') and 'nothing' in err[0]


# ------------------------------------------------------------------------------------------------
# Real runs on shapes (slow)
# ------------------------------------------------------------------------------------------------

TINY = ['TRAIN.SCALES', '(64,)', 'TRAIN.MAX_SIZE', '96', 'TRAIN.BATCH_SIZE_PER_IM', '32',
        'TRAIN.RPN_PRE_NMS_TOP_N', '200', 'TRAIN.RPN_POST_NMS_TOP_N', '100',
        'SOLVER.WARM_UP_ITERS', '2', 'SOLVER.STEPS', '[0, 3]',
        'TEST.SCALE', '64', 'TEST.MAX_SIZE', '96', 'TEST.RPN_PRE_NMS_TOP_N', '200',
        'TEST.RPN_POST_NMS_TOP_N', '50', 'TEST.DETECTIONS_PER_IM', '10']


@pytest.fixture(scope='module')
def small_shapes_val(tmp_path_factory):
    """coco_json spec of the first 4 images of shapes_val (a fast evaluation)."""
    from pydetectron.datasets import dataset_catalog as dc
    dc.prepare('shapes_val')
    with open(dc.get_ann_fn('shapes_val')) as f:
        data = json.load(f)
    keep = {im['id'] for im in sorted(data['images'], key=lambda im: im['id'])[:4]}
    data['images'] = [im for im in data['images'] if im['id'] in keep]
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] in keep]
    path = str(tmp_path_factory.mktemp('val4') / 'shapes_val4.json')
    with open(path, 'w') as f:
        json.dump(data, f)
    return 'coco_json:%s:%s' % (path, dc.get_im_dir('shapes_val'))


def _train_cmd(output_dir, test_spec, *extra, max_iter=4):
    # --bs 1 doubles the config's schedule: MAX_ITER 4 -> 8 steps
    return ([sys.executable, os.path.join(ROOT, 'tools', 'train_net_step.py'),
             '--dataset', 'shapes', '--cfg', THIN_CFG, '--no_cuda', '--bs', '1', '--nw', '0',
             '--disp_interval', '2', '--seed', '5', '--output_dir', str(output_dir)]
            + list(extra)
            + ['--set', 'SOLVER.MAX_ITER', str(max_iter), 'TRAIN.SNAPSHOT_ITERS', '1',
               'TEST.DATASETS', "('%s',)" % test_spec] + TINY)


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def _run(cmd, timeout=400):
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _comparable(records):
    """The records without what depends on the machine (time, eta, memory)."""
    return [{k: v for k, v in r.items() if k not in ('time', 'eta', 'mem', 'host_mem')}
            for r in records]


@pytest.mark.slow
def test_eval_period_resume_gives_the_same_metrics_file(tmp_path, small_shapes_val):
    straight = tmp_path / 'straight'
    out = _run(_train_cmd(straight, small_shapes_val, '--eval_period', '3'))
    records = run_folder.read_metrics(str(straight))
    evals = [r['iter'] for r in records if r['type'] == 'eval']
    assert evals == [3, 6, 8]          # each period and the end; no second test at the end
    assert [r['iter'] for r in records if r['type'] == 'train'] == [1, 3, 5, 7, 8]
    first = next(r for r in records if r['type'] == 'eval')
    assert set(first['results'][next(iter(first['results']))]) == {'box', 'mask'}
    with open(str(straight / 'log.txt')) as f:
        log = f.read()
    assert '[Step 8 / 8]' in log and 'copypaste: Task: mask' in log
    assert 'Evaluating the model after step 6' in out.stdout
    with open(str(straight / 'classes.txt')) as f:
        assert f.read().split() == ['__background__', 'circle', 'square', 'triangle']

    # the same run, killed (no chance to save) once its first evaluation is written, resumed
    killed = tmp_path / 'killed'
    cmd = _train_cmd(killed, small_shapes_val, '--eval_period', '3')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = killed / 'metrics.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"eval"' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    _run(cmd)
    assert _comparable(run_folder.read_metrics(str(killed))) == _comparable(records)


# ------------------------------------------------------------------------------------------------
# Through tools/train_net_step.py with the engine tests' fake model and loader (fast)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_tool(tmp_path, fresh_cfg, monkeypatch):
    """``run(output_dir, *flags)`` trains 6 steps of the fake detector on a 2-category COCO
    json, TEST.DATASETS the same json; inference is faked (``calls``)."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import train_net_step
    from _engine_fakes import FakeDetector, FakeLoader
    from pydetectron.engine import inference
    from pydetectron.core.config import reset_cfg
    from pydetectron.engine import launch
    d = tmp_path / 'tiny'
    os.makedirs(str(d / 'images'))
    with open(str(d / 'tiny.json'), 'w') as f:
        json.dump({'images': [], 'annotations': [],
                   'categories': [{'id': 1, 'name': 'a'}, {'id': 7, 'name': 'b'}]}, f)
    spec = 'coco_json:%s:%s' % (d / 'tiny.json', d / 'images')
    calls = []
    monkeypatch.setattr(inference, 'run_inference', _fake_inference(calls))

    def run(output_dir, *flags, test_dataset=spec, main=False, sets=()):
        reset_cfg()
        argv = ['--dataset', spec, '--cfg', os.path.join(ROOT, 'configs', 'baselines',
                                                          'e2e_faster_rcnn_R-50-C4_1x.yaml'),
                '--no_cuda', '--allow_random_frozen_bn', '--bs', '2', '--disp_interval', '2',
                '--nw', '0',
                '--output_dir', str(output_dir)] + list(flags) + [
                '--set', 'NUM_GPUS', '1', 'TRAIN.IMS_PER_BATCH', '2', 'SOLVER.MAX_ITER', '6',
                'SOLVER.STEPS', '[0, 4]', 'SOLVER.WARM_UP_ITERS', '2',
                'TRAIN.SNAPSHOT_ITERS', '3', 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False',
                'TEST.DATASETS', "('%s',)" % test_dataset] + list(sets)
        if main:
            return train_net_step.main(argv)
        return launch.main(train_net_step.parse_args(argv), build_model=lambda: FakeDetector(),
                           build_loader=lambda *a: ((lambda start_iter, seed: FakeLoader(
                               seed=seed, start_iter=start_iter)), 50))
    run.calls = calls
    return run


def _evals(output_dir):
    return [r['iter'] for r in run_folder.read_metrics(str(output_dir)) if r['type'] == 'eval']


def test_test_after_training_is_the_default_and_skip_test_skips_it(tmp_path, fake_tool):
    assert fake_tool(tmp_path / 'default') == 0
    assert _evals(tmp_path / 'default') == [6] and len(fake_tool.calls) == 1
    train = [r for r in run_folder.read_metrics(str(tmp_path / 'default'))
             if r['type'] == 'train']
    assert [r['iter'] for r in train] == [1, 3, 5, 6]
    assert all(r['host_mem'] > 10 and r['lr'] > 0 and r['loss'] > 0 for r in train)
    with open(str(tmp_path / 'default' / 'log.txt')) as f:
        assert '[Step 6 / 6]' in f.read()
    with open(str(tmp_path / 'default' / 'classes.txt')) as f:
        assert f.read() == '__background__\na\nb\n'
    assert fake_tool(tmp_path / 'skip', '--skip-test') == 0
    assert _evals(tmp_path / 'skip') == [] and len(fake_tool.calls) == 1


def test_eval_period_flag_and_config_key(tmp_path, fake_tool):
    assert fake_tool(tmp_path / 'p', '--eval_period', '2') == 0
    assert _evals(tmp_path / 'p') == [2, 4, 6] and len(fake_tool.calls) == 3  # no 2nd final test
    assert fake_tool(tmp_path / 'k', '--skip-test', sets=['TEST.EVAL_PERIOD', '4']) == 0
    assert _evals(tmp_path / 'k') == [4, 6]


def test_unusable_test_datasets(tmp_path, fake_tool, capsys):
    # the default test after training: a warning, and training runs
    assert fake_tool(tmp_path / 'w', test_dataset='coco_2014_minival') == 0
    assert 'No test after training' in capsys.readouterr().out
    assert _evals(tmp_path / 'w') == [] and fake_tool.calls == []
    # asked for evaluations: one line naming the key, exit 2, before any step
    assert fake_tool(tmp_path / 'e', '--eval_period', '2', test_dataset='coco_2014_minival',
                     main=True) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'TEST.DATASETS' in err[0]
    assert not os.path.exists(str(tmp_path / 'e' / 'ckpt'))
