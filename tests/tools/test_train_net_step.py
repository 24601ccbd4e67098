"""tools/train_net_step.py and engine.launch: the seed's adaptive config changes, start-up checks,
outputs (config.yaml, checkpoints, TensorBoard), auto-resume, --no_save, architecture mismatch.
The model and loader are the engine tests' fakes, so this runs in seconds on the real config
system, dataset catalog and training engine."""
import glob
import math
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'engine'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import train_net_step  # noqa: E402
from _engine_fakes import FakeDetector, FakeLoader  # noqa: E402
from pydetectron.engine import checkpoint as ck  # noqa: E402
from pydetectron.engine import launch, train_setup  # noqa: E402

CFG = os.path.join(ROOT, 'configs', 'baselines', 'e2e_faster_rcnn_R-50-C4_1x.yaml')


def test_adaptive_config_changes(fresh_cfg):
    from pydetectron.core.config import merge_cfg_from_file
    merge_cfg_from_file(os.path.join(ROOT, 'configs', 'baselines',
                                     'e2e_mask_rcnn_R-50-FPN_1x.yaml'))
    # 8 GPUs x 2 images, BASE_LR 0.02, STEPS [0, 60000, 80000], MAX_ITER 90000
    out = []
    bs = train_setup.adjust_config_for_batch_size(fresh_cfg, batch_size=2, iter_size=2,
                                                  num_gpus=1, num_workers=0, write=out.append)
    assert bs == 2
    assert fresh_cfg.NUM_GPUS == 1 and fresh_cfg.TRAIN.IMS_PER_BATCH == 2
    assert fresh_cfg.SOLVER.BASE_LR == pytest.approx(0.02 * 2 / 16)      # per-pass batch
    assert list(fresh_cfg.SOLVER.STEPS) == [0, 240000, 320000]            # x 16 / 4
    assert fresh_cfg.SOLVER.MAX_ITER == 360000
    assert fresh_cfg.FPN.RPN_COLLECT_SCALE == 1.0
    assert fresh_cfg.DATA_LOADER.NUM_THREADS == 0
    text = '\n'.join(out)
    assert 'effective_batch_size: 16 --> 4' in text and 'BASE_LR: 0.02 --> 0.0025' in text
    assert train_setup.snapshot_period(fresh_cfg) == 20000


def test_adaptive_config_overrides_and_errors(fresh_cfg):
    fresh_cfg.NUM_GPUS, fresh_cfg.TRAIN.IMS_PER_BATCH = 2, 2
    fresh_cfg.SOLVER.STEPS, fresh_cfg.SOLVER.MAX_ITER = [0, 30], 45
    fresh_cfg.FPN.FPN_ON = fresh_cfg.MODEL.FASTER_RCNN = True
    train_setup.adjust_config_for_batch_size(fresh_cfg, batch_size=3, num_gpus=3, optimizer='Adam',
                                             lr=0.5, lr_decay_gamma=0.2, write=lambda *a: None)
    assert fresh_cfg.TRAIN.IMS_PER_BATCH == 1 and fresh_cfg.FPN.RPN_COLLECT_SCALE == 0.5
    assert list(fresh_cfg.SOLVER.STEPS) == [0, 40] and fresh_cfg.SOLVER.MAX_ITER == 60
    assert (fresh_cfg.SOLVER.TYPE, fresh_cfg.SOLVER.BASE_LR, fresh_cfg.SOLVER.GAMMA) == \
        ('Adam', 0.5, 0.2)
    with pytest.raises(ValueError, match='--bs 3 is not a multiple of the number of devices 2'):
        train_setup.adjust_config_for_batch_size(fresh_cfg, batch_size=3, num_gpus=2)


def fake_loader_builder(cfg, batch_size, num_gpus, info):
    return (lambda start_iter, seed: FakeLoader(seed=seed, start_iter=start_iter)), 50


def run_tool(tmp_path, dataset, *extra, max_iter=6, built=None):
    args = train_net_step.parse_args([
        '--dataset', dataset,
        '--cfg', CFG, '--no_cuda', '--bs', '2', '--disp_interval', '2', '--nw', '0',
        '--set', 'NUM_GPUS', '1', 'TRAIN.IMS_PER_BATCH', '2', 'SOLVER.MAX_ITER', str(max_iter),
        'SOLVER.STEPS', '[0, 4]', 'SOLVER.BASE_LR', '0.01', 'SOLVER.WARM_UP_ITERS', '2',
        'TRAIN.SNAPSHOT_ITERS', '3', 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False',
        '--output_dir', str(tmp_path)] + list(extra))

    def build_model():
        torch.manual_seed(0)
        m = FakeDetector()
        if built is not None:
            built.append(m)
        return m
    return launch.main(args, build_model=build_model, build_loader=fake_loader_builder)


@pytest.fixture
def tiny_coco(tmp_path_factory):
    """--dataset of a 2-category COCO json (the catalog reads the categories for
    MODEL.NUM_CLASSES; the fake loader never opens an image)."""
    import json
    d = tmp_path_factory.mktemp('tiny_coco')
    os.makedirs(d / 'images')
    with open(d / 'tiny_coco.json', 'w') as f:
        json.dump({'images': [], 'annotations': [],
                   'categories': [{'id': 1, 'name': 'a'}, {'id': 7, 'name': 'b'}]}, f)
    return 'coco_json:{}:{}'.format(d / 'tiny_coco.json', d / 'images')


def test_shape_buckets_flag_reaches_the_config(tmp_path, fresh_cfg, tiny_coco):
    from pydetectron.core.config import cfg, load_cfg
    assert run_tool(tmp_path / 'a', tiny_coco, '--shape_buckets', '64', max_iter=1) == 0
    assert cfg.SHAPE_BUCKETS == 64      # what build_train_loader reads
    saved = load_cfg(open(tmp_path / 'a' / 'config.yaml').read())
    assert saved['SHAPE_BUCKETS'] == 64


@pytest.mark.parametrize('flags, expected', [((), True), (('--cuda_graphs',), True),
                                            (('--no-cuda_graphs',), False)])
def test_cuda_graphs_flag_reaches_the_training_loop(tmp_path, fresh_cfg, tiny_coco, monkeypatch,
                                                    flags, expected):
    """--cuda_graphs (on by default) turns on the conv body's graphs around the training loop,
    for the model itself (not its DataParallel wrapper)."""
    import contextlib
    from pydetectron.core import cuda_graphs
    seen = []

    @contextlib.contextmanager
    def record(model, enabled=True):
        seen.append((type(model).__name__, enabled))
        yield None
    monkeypatch.setattr(cuda_graphs, 'training_conv_body_graphs', record)
    assert run_tool(tmp_path / 'a', tiny_coco, *flags, max_iter=1) == 0
    assert seen == [('FakeDetector', expected)]


def test_outputs_checkpoints_tensorboard_and_auto_resume(tmp_path, fresh_cfg, tiny_coco, capsys):
    from pydetectron.core.config import load_cfg, reset_cfg
    built = []
    assert run_tool(tmp_path / 'a', tiny_coco, '--use_tfboard', built=built) == 0
    out = capsys.readouterr().out
    assert '[Step 1 / 6]' in out and '[Step 6 / 6]' in out and 'Adaptive config changes' in out
    saved = load_cfg(open(tmp_path / 'a' / 'config.yaml').read())
    assert saved['MODEL']['NUM_CLASSES'] == 3 and saved['SOLVER']['MAX_ITER'] == 6
    assert saved['TRAIN']['DATASETS'][0].startswith('json_tiny_coco')
    assert [s for s, _ in ck.list_checkpoints(str(tmp_path / 'a'))] == [2, 5]
    assert glob.glob(str(tmp_path / 'a' / 'events.out.tfevents.*'))
    final = ck.load_checkpoint(str(tmp_path / 'a' / 'ckpt' / 'model_step5.pth'))
    assert final['batch_size'] == 2 and final['train_size'] == 50
    assert final['args']['dataset'].startswith('coco_json:') and 'NUM_CLASSES: 3' in final['cfg']

    # Same output dir, longer schedule: TRAIN.AUTO_RESUME continues from step 5 ...
    reset_cfg()
    built = []
    assert run_tool(tmp_path / 'a', tiny_coco, max_iter=8, built=built) == 0
    assert 'TRAIN.AUTO_RESUME: resuming from' in capsys.readouterr().out
    assert built[0].forward_calls == 2                           # steps 6 and 7 only
    # ... and ends where an 8-step run from scratch ends
    reset_cfg()
    ref = []
    assert run_tool(tmp_path / 'b', tiny_coco, max_iter=8, built=ref) == 0
    for (k, a), b in zip(built[0].state_dict().items(), ref[0].state_dict().values()):
        assert torch.equal(a, b), k


def test_no_save_writes_nothing(tmp_path, fresh_cfg, tiny_coco):
    assert run_tool(tmp_path / 'n', tiny_coco, '--no_save', max_iter=2) == 0
    assert not (tmp_path / 'n').exists()


def test_missing_imagenet_weights_is_a_clear_error(tmp_path, fresh_cfg, tiny_coco):
    args = train_net_step.parse_args([
        '--dataset', tiny_coco, '--cfg', CFG, '--no_cuda', '--output_dir',
        str(tmp_path), '--set', 'RESNETS.IMAGENET_PRETRAINED_WEIGHTS',
        'data/pretrained_model/R-0.pkl'])
    with pytest.raises(FileNotFoundError) as e:
        launch.main(args, build_model=lambda: pytest.fail('model built before the check'),
                    build_loader=fake_loader_builder)
    msg = str(e.value)
    assert 'RESNETS.IMAGENET_PRETRAINED_WEIGHTS' in msg and 'R-0.pkl' in msg
    assert 'tools/download_imagenet_weights.py R-0.pkl' in msg
    assert '--set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False' in msg


def test_checkpoint_of_another_architecture(tmp_path, fresh_cfg, tiny_coco):
    other = FakeDetector()
    other.bbox_pred = torch.nn.Linear(16, 12)
    from pydetectron.engine.optimizer import build_optimizer
    from _engine_fakes import solver_cfg
    path = ck.save_checkpoint(str(tmp_path / 'other'), 3, other,
                              build_optimizer(other, solver_cfg()))
    with pytest.raises(ck.CheckpointError, match=r'shape mismatch: bbox_pred.weight checkpoint '
                                                 r'\(12, 16\) vs model \(4, 16\)'):
        run_tool(tmp_path / 'c', tiny_coco, '--load_ckpt', path, '--resume')


def test_resume_without_checkpoint_says_where_it_looked(tmp_path, fresh_cfg, tiny_coco):
    with pytest.raises(FileNotFoundError, match='--resume: no complete checkpoint under'):
        run_tool(tmp_path / 'empty', tiny_coco, '--resume')


def test_rerun_after_the_end_trains_nothing(tmp_path, fresh_cfg, tiny_coco, capsys):
    from pydetectron.core.config import reset_cfg
    assert run_tool(tmp_path, tiny_coco, max_iter=2) == 0
    reset_cfg()
    assert run_tool(tmp_path, tiny_coco, max_iter=2, built=[]) == 0
    assert 'Nothing to train' in capsys.readouterr().out


def test_auto_resume_wins_over_initial_weights(tmp_path, fresh_cfg, tiny_coco, capsys):
    """Re-running an interrupted command that started from --load_ckpt continues the run."""
    from pydetectron.core.config import reset_cfg
    assert run_tool(tmp_path / 'init', tiny_coco, max_iter=2) == 0
    init = str(tmp_path / 'init' / 'ckpt' / 'model_step1.pth')
    reset_cfg()
    assert run_tool(tmp_path / 'run', tiny_coco, '--load_ckpt', init, max_iter=3) == 0
    reset_cfg()
    built = []
    assert run_tool(tmp_path / 'run', tiny_coco, '--load_ckpt', init, max_iter=5,
                    built=built) == 0
    out = capsys.readouterr().out
    assert 'TRAIN.AUTO_RESUME: resuming from' in out and 'model_step2.pth' in out
    assert built[0].forward_calls == 2                    # steps 3 and 4


def test_cli_reports_user_errors_without_traceback(tmp_path):
    import subprocess
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'train_net_step.py'), '--cfg', CFG,
         '--dataset', 'coco2017', '--no_cuda', '--output_dir', str(tmp_path),
         '--set', 'SOLVER.BASE_LRR', '0.1'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith('train_net_step.py: error: unknown config key SOLVER.BASE_LRR')
    assert 'SOLVER.BASE_LR' in proc.stderr and 'Traceback' not in proc.stderr


THIN = ['NUM_GPUS', '1', 'TRAIN.IMS_PER_BATCH', '1', 'SOLVER.BASE_LR', '0.005',
        'SOLVER.WARM_UP_ITERS', '2', 'TRAIN.SNAPSHOT_ITERS', '100',
        'MODEL.CONV_BODY', 'FPN.fpn_ResNet_conv5_body', 'RESNETS.BLOCK_COUNTS', '(1, 1, 1, 1)',
        'RESNETS.STEM_OUT_DIM', '16', 'RESNETS.RES2_OUT_DIM', '32', 'RESNETS.WIDTH_PER_GROUP', '8',
        'GROUP_NORM.NUM_GROUPS', '8', 'FPN.DIM', '32', 'FAST_RCNN.MLP_HEAD_DIM', '64',
        'MRCNN.DIM_REDUCED', '32', 'TRAIN.SCALES', '(128,)', 'TRAIN.MAX_SIZE', '224',
        'TRAIN.BATCH_SIZE_PER_IM', '32', 'TRAIN.RPN_BATCH_SIZE_PER_IM', '64',
        'TRAIN.RPN_PRE_NMS_TOP_N', '200', 'TRAIN.RPN_POST_NMS_TOP_N', '200']


@pytest.mark.slow
def test_real_model_and_loader_resume_on_coco_mini(tmp_path, fresh_cfg, coco_mini):
    """Generalized_RCNN (a thin GroupNorm Mask R-CNN FPN) and the real loader on coco_mini: an
    auto-resumed run ends with exactly the weights and momentum of an uninterrupted one."""
    from pydetectron.core.config import reset_cfg

    def run(out, max_iter):
        reset_cfg()
        args = train_net_step.parse_args([
            '--dataset', os.path.join(coco_mini, 'annotations', 'instances_train2017.json'),
            '--cfg', os.path.join(ROOT, 'configs', 'gn_baselines',
                                  'scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml'),
            '--no_cuda', '--bs', '1', '--nw', '0', '--output_dir', str(out),
            '--set', 'SOLVER.MAX_ITER', str(max_iter)] + THIN)
        assert launch.main(args) == 0

    run(tmp_path / 'whole', 3)
    run(tmp_path / 'split', 1)
    run(tmp_path / 'split', 3)            # TRAIN.AUTO_RESUME from model_step0.pth
    assert [s for s, _ in ck.list_checkpoints(str(tmp_path / 'split'))] == [0, 2]
    a = ck.load_checkpoint(str(tmp_path / 'whole' / 'ckpt' / 'model_step2.pth'))
    b = ck.load_checkpoint(str(tmp_path / 'split' / 'ckpt' / 'model_step2.pth'))
    assert set(a['model']) == set(b['model']) and len(a['model']) > 50
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
        assert torch.isfinite(v).all(), k
    for k, s in a['optimizer']['state'].items():
        assert torch.equal(s['momentum_buffer'], b['optimizer']['state'][k]['momentum_buffer'])
    assert a['data_order'] == b['data_order'] == {'seed': 3, 'start_iter': 3}


def test_speed_options_reach_the_model(tmp_path, fresh_cfg, tiny_coco, monkeypatch):
    from pydetectron.engine import speed_options
    seen = []
    monkeypatch.setattr(speed_options, 'apply_speed_options',
                        lambda model, channels_last=False, compile_mode=None:
                        seen.append((model, channels_last, compile_mode)) or model)
    built = []
    assert run_tool(tmp_path / 's', tiny_coco, '--no_save', '--channels_last', '--compile',
                    'reduce-overhead', max_iter=2, built=built) == 0
    assert seen == [(built[0], True, 'reduce-overhead')]
    from pydetectron.core.config import cfg
    assert cfg.SHAPE_BUCKETS == 160     # a CUDA-graph mode pads the blobs to shape buckets
    assert train_net_step.parse_args(['--dataset', 'x', '--cfg', CFG, '--compile']).compile \
        == 'default'


def _memory_format_chosen(tmp_path, dataset, monkeypatch, *flags, cuda=False):
    from pydetectron.engine import speed_options
    seen = []
    monkeypatch.setattr(speed_options, 'apply_speed_options',
                        lambda model, channels_last=False, compile_mode=None:
                        seen.append(channels_last) or model)
    args = ['--no_save'] + list(flags)
    if cuda:
        real_parse = train_net_step.parse_args
        monkeypatch.setattr(train_net_step, 'parse_args', lambda argv: real_parse(
            [a for a in argv if a != '--no_cuda']))
    assert run_tool(tmp_path, dataset, *args, max_iter=1) == 0
    return seen


@pytest.mark.parametrize('flags, expected', [
    ((), False), (('--amp',), False),                     # CPU: NCHW unless asked
    (('--amp', '--channels_last'), True), (('--channels_last',), True),
    (('--amp', '--no-channels_last'), False)])
def test_memory_format_on_the_cpu(tmp_path, fresh_cfg, tiny_coco, monkeypatch, flags, expected):
    assert _memory_format_chosen(tmp_path / 'm', tiny_coco, monkeypatch, *flags) == [expected]


def test_memory_format_rule():
    from pydetectron.engine.speed_options import training_channels_last as rule
    assert rule(None, True, 'cuda') is True            # --amp on a GPU: NHWC by default
    assert rule(None, True, torch.device('cuda', 1)) is True
    assert rule(None, False, 'cuda') is False
    assert rule(None, True, 'cpu') is False
    assert rule(False, True, 'cuda') is False          # --no-channels_last wins
    assert rule(True, False, 'cpu') is True


@pytest.mark.cuda
@pytest.mark.parametrize('flags, expected', [
    (('--amp',), True), ((), False), (('--amp', '--no-channels_last'), False)])
def test_amp_on_the_gpu_trains_channels_last_by_default(tmp_path, fresh_cfg, tiny_coco,
                                                        monkeypatch, flags, expected):
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA')
    assert _memory_format_chosen(tmp_path / 'g', tiny_coco, monkeypatch, *flags,
                                 cuda=True) == [expected]


@pytest.mark.cuda
@pytest.mark.parametrize('cfg_file', [
    'configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml',
    'configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml'])
def test_cuda_graphs_of_the_body_train_as_the_eager_body(tmp_path, fresh_cfg, coco_mini,
                                                         monkeypatch, cfg_file):
    """train_net_step on coco_mini's photos (16 steps of 2 at scale 256, whose blob shapes repeat:
    graphs are captured and replayed) with --cuda_graphs: every replayed forward equals the eager
    body's on the same input with the parameters of that step (the optimizer's updates are seen),
    bit for bit under cuDNN's deterministic algorithms; the run without them trains as long.

    (Their loss histories are not compared: the eager run does not repeat itself -- RoIAlign's
    backward adds with atomics -- and a last-bit change of the weights after one step moves the
    RPN's proposals and the sampled RoIs, measured 1-11% apart from the second step on an H100.
    ``tests/core/test_cuda_graphs.py`` compares gradients and updates on a body of its own.)"""
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA')
    from pydetectron.core import cuda_graphs
    from pydetectron.core.config import reset_cfg
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_train2017.json'),
        os.path.join(coco_mini, 'images', 'train2017'))
    trainers, graphed = [], []

    class RecordedTrainer(launch.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainers.append(self)

    class Recorded(cuda_graphs.TrainingGraphedForward):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            graphed.append(self)
            self.differences = []   # per replay: the largest difference from the eager body

        def __call__(self, x, *a, **k):
            replays = self.replays
            out = super().__call__(x, *a, **k)
            if self.replays > replays:
                with torch.no_grad():
                    ref = self.forward(x)
                pairs = list(zip(out, ref)) if isinstance(out, (list, tuple)) else [(out, ref)]
                assert len(pairs) > 1 and all(a.shape == b.shape for a, b in pairs)
                self.differences.append(max((a.detach() - b).abs().max().item()
                                            for a, b in pairs))
            return out
    monkeypatch.setattr(launch, 'Trainer', RecordedTrainer)
    monkeypatch.setattr(cuda_graphs, 'TrainingGraphedForward', Recorded)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    for flag in ('--no-cuda_graphs', '--cuda_graphs'):
        reset_cfg()
        args = train_net_step.parse_args([
            '--dataset', spec, '--cfg', os.path.join(root, cfg_file), '--bs', '2', '--nw', '0',
            '--no_save', '--skip-test', '--allow_random_frozen_bn', '--disp_interval', '8',
            '--output_dir', str(tmp_path / flag), flag, '--set',
            'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False', 'SOLVER.MAX_ITER', '2',
            'TRAIN.SCALES', '(256,)', 'TRAIN.MAX_SIZE', '256', 'TRAIN.WEIGHTS', "''"])
        assert launch.main(args) == 0
    eager, graphs = trainers
    assert len(graphed) == 1 and not graphed[0].failed
    assert graphed[0].captures >= 2 and graphed[0].replays >= 6
    assert len(eager.loss_history) == len(graphs.loss_history) == 16
    assert eager.loss_history[0] == graphs.loss_history[0]     # step 1: eager in both
    assert all(math.isfinite(v) for v in eager.loss_history + graphs.loss_history)
    print('losses: eager %s, graphs %s' % (eager.loss_history, graphs.loss_history))
    assert len(graphed[0].differences) == graphed[0].replays
    assert max(graphed[0].differences) == 0.0
