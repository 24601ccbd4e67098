"""dev/benchmark_train_net.py's torchvision-free parts on the CPU: its arguments, the step
arithmetic (train_net_step.py's --bs schedule scaling, the time per step from two runs), the
command line it gives train_net_step.py, and the entries dev/gpu/trainnet.sh hands it on the GPU
machine (a wrong flag there would cost the device call)."""
import os
import re
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import benchmark_train_net as btn  # noqa: E402

GN_CFG = 'configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml'


def test_parse_args_defaults_and_amp_pairing():
    args = btn.parse_args([])
    assert (args.bs, args.steps, args.short, args.warmup, args.amp) == (2, 120, 20, 10, False)
    assert args.extra_args == []
    # --amp: ours gets train_net_step.py's --amp, the torchvision loop autocasts
    args = btn.parse_args(['--amp', '--extra=--channels_last'])
    assert args.amp and args.extra_args == ['--channels_last', '--amp']
    # --extra=--amp alone pairs the torchvision loop too
    args = btn.parse_args(['--extra=--amp'])
    assert args.amp and args.extra_args == ['--amp']
    # --lr: ours' train_net_step.py --lr (after its batch scaling), the torchvision loop's LR
    args = btn.parse_args(['--bs', '16', '--lr', '0.005'])
    assert args.lr == 0.005 and args.extra_args == ['--lr', '0.005']
    # repeatable, each one split as a shell would
    args = btn.parse_args(['--extra=--cuda_graphs', '--extra=--shape_buckets 160'])
    assert args.extra_args == ['--cuda_graphs', '--shape_buckets', '160']


@pytest.mark.parametrize('argv, message', [
    (['--short', '20', '--steps', '20'], '--short (20) must be below --steps (20)'),
    (['--bs', '0'], '--bs must be >= 1'),
    (['--warmup', '-1'], '--warmup and --nw must be >= 0'),
    (['--impl', 'ours,detectron'], "--impl: a comma-separated list of 'ours' and 'torchvision'"),
    (['--env', 'NOVALUE'], "--env: KEY=VALUE, got 'NOVALUE'"),
    (['--lr', '0'], '--lr must be > 0, got 0.0'),
    (['--env', '=1'], "--env: KEY=VALUE, got '=1'"),
])
def test_parse_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        btn.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_config_batch(tmp_path):
    # Detectron's configs: 8 GPUs x 2 images
    assert btn.config_batch(os.path.join(ROOT, btn.CONFIG)) == 16
    assert btn.config_batch(os.path.join(ROOT, GN_CFG)) == 16
    # keys left out: Detectron's defaults NUM_GPUS 1, TRAIN.IMS_PER_BATCH 2
    p = tmp_path / 'c.yaml'
    p.write_text('TRAIN:\n  SCALES: (800,)\n')
    assert btn.config_batch(str(p)) == 2
    p.write_text('NUM_GPUS: 4\nTRAIN:\n  IMS_PER_BATCH: 1\n')
    assert btn.config_batch(str(p)) == 4


def test_max_iters_and_steps_run():
    # --bs 2 on a 16-image config: one MAX_ITER unit is 8 steps; 20 -> 2.5 units -> 3 (rounded
    # half up, as train_setup), 120 -> 15
    assert btn.max_iters(120, 20, 2, 16) == (3, 15)
    assert (btn.steps_run(3, 2, 16), btn.steps_run(15, 2, 16)) == (24, 120)
    # small counts: the long run stays one unit longer (it once divided by zero here)
    assert btn.max_iters(6, 3, 2, 16) == (1, 2)
    assert (btn.steps_run(1, 2, 16), btn.steps_run(2, 2, 16)) == (8, 16)
    # --bs 8: units of 2 steps
    assert btn.max_iters(64, 16, 8, 16) == (8, 32)
    assert (btn.steps_run(8, 8, 16), btn.steps_run(32, 8, 16)) == (16, 64)
    # train_setup's own arithmetic: MAX_ITER * 16 / bs, rounded half up
    assert btn.steps_run(1, 3, 16) == 5     # 5.33
    assert btn.steps_run(5, 3, 16) == 27    # 26.67


def test_seconds_per_step():
    # 24 steps in 30 s, 120 steps in 78 s: 48 s for 96 more steps
    assert btn.seconds_per_step(30.0, 24, 78.0, 120) == pytest.approx(0.5, abs=1e-15)
    with pytest.raises(ValueError, match='must be longer'):
        btn.seconds_per_step(30.0, 16, 31.0, 16)


def _console(step, max_iter, loss, mem=None):
    # the block train_net_step.py prints on a log step, by the package's own formatter
    from collections import OrderedDict
    from pydetectron.utils.logging import format_stats
    stats = OrderedDict(iter=step, time=0.1, eta='0:00:01', loss=loss, lr=0.001)
    if mem is not None:
        stats['mem'] = mem
    stats['metrics'] = OrderedDict(accuracy_cls=0.5)
    stats['head_losses'] = OrderedDict(loss_cls=0.25, loss_mask=0.5)
    return format_stats(stats, 'run', 'cfg.yaml', max_iter) + '\n'


def test_seconds_per_step_in_run():
    # lines after steps 1, 20, 40, 48 at 5, 40, 60, 68 s (slow first steps): from step 20 (past
    # 10 warm-up steps) to 48, 28 steps in 28 s; from step 1 it would be 63 s / 47
    marks = [(5.0, 1), (40.0, 20), (60.0, 40), (68.0, 48)]
    assert btn.seconds_per_step_in_run(marks, 10) == pytest.approx(1.0, abs=1e-15)
    # no line past the warm-up but the last one: from the first line
    assert btn.seconds_per_step_in_run([(5.0, 1), (12.0, 8)], 10) == pytest.approx(1.0)
    assert btn.seconds_per_step_in_run([(5.0, 8)], 0) is None


def test_parse_console():
    text = ('INFO train_net_step.py: 10: loss: not a stats line\n'
            + _console(1, 48, 3.5, mem=1100) + _console(20, 48, 2.25, mem=1300)
            + _console(48, 48, 1.75, mem=1200))
    assert btn.parse_console(text) == (48, 1300, 1.75)
    # the CPU prints no memory
    assert btn.parse_console(_console(8, 8, float('nan')))[:2] == (8, None)
    with pytest.raises(SystemExit, match='no "\\[Step k / N\\]" line'):
        btn.parse_console('Traceback ...\n')


def test_run_ours_command_and_its_counts(tmp_path, monkeypatch):
    seen = {}

    def fake_popen(cmd, stdout, stderr, text, env):
        seen['cmd'], seen['env'] = cmd, env
        out = (_console(1, 48, 4.0, 800) + _console(20, 48, 3.5, 900)
               + _console(48, 48, 2.25, 1100))
        return types.SimpleNamespace(stdout=iter(out.splitlines(True)), wait=lambda: 0)

    monkeypatch.setattr(subprocess, 'Popen', fake_popen)
    monkeypatch.delenv('PYTHONUNBUFFERED', raising=False)
    monkeypatch.setenv('PYDETECTRON_FUSED_GROUP_NORM', '0')
    args = btn.parse_args(['--device', 'cpu', '--bs', '4', '--scale', '200', '--max-size', '333',
                           '--amp', '--data', '/data/coco_mini', '--env',
                           'PYDETECTRON_FUSED_GROUP_NORM=1', '--env', 'A=b=c'])
    run = btn.run_ours(args, 12, str(tmp_path / 'run'))
    cmd = seen['cmd']
    # --env: ours' environment only, over the benchmark's own
    assert seen['env']['PYDETECTRON_FUSED_GROUP_NORM'] == '1' and seen['env']['A'] == 'b=c'
    assert os.environ['PYDETECTRON_FUSED_GROUP_NORM'] == '0'
    assert (run['steps'], run['mem'], run['loss']) == (48, 1100, 2.25)
    assert [k for _, k in run['marks']] == [1, 20, 48] and run['wall'] >= run['marks'][-1][0]
    assert seen['env']['PYTHONUNBUFFERED'] == '1'   # the Step lines arrive as they are printed
    assert cmd[1].endswith(os.path.join('tools', 'train_net_step.py'))
    assert cmd[cmd.index('--bs') + 1] == '4'
    assert '--no_cuda' in cmd and cmd[-1] == '--amp'
    sets = cmd[cmd.index('--set') + 1:]
    assert sets[sets.index('SOLVER.MAX_ITER') + 1] == '12'
    assert sets[sets.index('TRAIN.SCALES') + 1] == '(200,)'
    assert sets[sets.index('TRAIN.MAX_SIZE') + 1] == '333'
    assert cmd[cmd.index('--dataset') + 1] == (
        'coco_json:/data/coco_mini/annotations/instances_train2017.json:'
        '/data/coco_mini/images/train2017')


def test_run_ours_from_another_tree(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_popen(cmd, stdout, stderr, text, env):
        seen['cmd'] = cmd
        return types.SimpleNamespace(stdout=iter(_console(8, 8, 1.0, 10).splitlines(True)),
                                     wait=lambda: 0)
    monkeypatch.setattr(subprocess, 'Popen', fake_popen)
    tree = tmp_path / 'other'
    (tree / 'tools').mkdir(parents=True)
    (tree / 'tools' / 'train_net_step.py').write_text('')
    args = btn.parse_args(['--device', 'cpu', '--tree', str(tree), '--data', '/d'])
    btn.run_ours(args, 8, str(tmp_path / 'run'))
    assert seen['cmd'][1] == os.path.join(str(tree), 'tools', 'train_net_step.py')
    assert seen['cmd'][seen['cmd'].index('--cfg') + 1] == os.path.join(ROOT, btn.CONFIG)
    with pytest.raises(SystemExit) as e:
        btn.parse_args(['--tree', str(tmp_path)])
    assert e.value.code == 2
    assert '--tree %s: no tools/train_net_step.py there' % tmp_path in capsys.readouterr().err


def _trainnet_entries(cpu, env=None):
    # dev/gpu/trainnet.sh with for_each_entry replaced by a printer of its list
    script = ('for_each_entry() { printf "%%s" "$1"; }; CPU=%d; . dev/gpu/trainnet.sh'
              % (1 if cpu else 0))
    proc = subprocess.run(['bash', '-c', script], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split(';')


def test_gpu_check_trainnet_entries_parse():
    entries = _trainnet_entries(cpu=False, env={'TRAINNET': ''})
    assert len(entries) == 4
    parsed = [btn.parse_args(e.split()) for e in entries]   # the shell splits on spaces
    assert [a.bs for a in parsed] == [2, 8, 8, 2]
    assert [a.amp for a in parsed] == [False, False, True, False]
    assert all(a.impl == 'ours,torchvision' and a.device == 'cuda' for a in parsed)
    assert parsed[3].cfg == GN_CFG and os.path.isfile(os.path.join(ROOT, parsed[3].cfg))
    # CPU=1: ours alone unless the torchvision rehearsal shim is asked for
    cpu = _trainnet_entries(cpu=True, env={'TRAINNET': '', 'PYDETECTRON_TV_SHIM': '0'})
    assert len(cpu) == 1 and btn.parse_args(cpu[0].split()).impl == 'ours'
    cpu = _trainnet_entries(cpu=True, env={'TRAINNET': '', 'PYDETECTRON_TV_SHIM': '1'})
    args = btn.parse_args(cpu[0].split())
    assert args.impl == 'ours,torchvision' and args.device == 'cpu'


def test_aspect_grouped_batches():
    # 5 landscape (even indices 0..8) and 4 portrait images; batches of 2 from one group each
    landscape = [True, False] * 4 + [True]
    sampler = btn._AspectGroupedBatches(landscape, 2)
    assert len(sampler) == 2 + 2
    first = list(sampler)
    for epoch in (first, list(sampler)):
        assert len(epoch) == 4 and all(len(b) == 2 for b in epoch)
        assert all(landscape[b[0]] == landscape[b[1]] for b in epoch)
        seen = [i for b in epoch for i in b]
        assert len(set(seen)) == 8     # one landscape image left over
        assert sum(landscape[i] for i in seen) == 4
    assert list(btn._AspectGroupedBatches(landscape, 2)) == first   # seeded: reproducible
    assert any(list(sampler) != first for _ in range(3))               # epochs reshuffle


def test_coco_masks_flipped_copies():
    import json
    import numpy as np
    data = btn.default_data()
    if not os.path.isdir(data):
        pytest.skip('coco_mini is not here')
    ds = btn._CocoMasks(data)
    n = len(ds.ids)
    assert len(ds) == 2 * n and len(ds.landscape) == 2 * n
    with open(os.path.join(data, 'annotations', 'instances_train2017.json')) as f:
        coco = json.load(f)
    info = next(i for i in coco['images'] if i['id'] == ds.ids[0])
    anns = [a for a in coco['annotations'] if a['image_id'] == info['id'] and not a['iscrowd']
            and a['bbox'][2] > 1 and a['bbox'][3] > 1]
    width = info['width']
    image, target = ds[0]
    fimage, ftarget = ds[n]
    assert image.shape == (3, info['height'], width)
    assert ftarget['labels'].tolist() == [a['category_id'] for a in anns]
    for box, fbox, a in zip(target['boxes'].tolist(), ftarget['boxes'].tolist(), anns):
        x, y, w, h = a['bbox']
        assert box == pytest.approx([x, y, x + w, y + h], abs=1e-4)
        # exclusive x2: the flipped box spans [width - (x + w), width - x)
        assert fbox == pytest.approx([width - x - w, y, width - x, y + h], abs=1e-4)
    # the image and the masks mirrored: column c of the flip is column width - 1 - c
    assert (fimage[:, :, 0] == image[:, :, width - 1]).all()
    assert (fimage[:, :, 5] == image[:, :, width - 6]).all()
    m, fm = target['masks'].numpy(), ftarget['masks'].numpy()
    cols = np.nonzero(m[0].any(axis=0))[0]
    fcols = np.nonzero(fm[0].any(axis=0))[0]
    assert (fcols.min(), fcols.max()) == (width - 1 - cols.max(), width - 1 - cols.min())


def _shared_configs(*folders):
    for folder in folders:
        base = os.path.join(ROOT, '..', 'shared', 'data', folder)
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if name.endswith('.yaml'):
                    yield os.path.relpath(os.path.join(dirpath, name), base)


@pytest.mark.parametrize('folder', ['detectron_configs', 'detectron_pytorch_configs'])
def test_config_body_reads_the_users_configs(folder):
    """Detectron's and Detectron.pytorch's own configs: GroupNorm bodies are those of their GN
    baselines and no other; FREEZE_AT is 0 where the file says so (Detectron's scratch
    configs; Detectron.pytorch's leave it at the default), 2 elsewhere."""
    names = list(_shared_configs(folder))
    assert len(names) > 30
    zero = 0
    for name in names:
        path = os.path.join(ROOT, '..', 'shared', 'data', folder, name)
        group_norm, freeze_at = btn.config_body(path)
        assert group_norm == ('gn_baselines' in name), name
        with open(path) as f:
            says_zero = re.search(r'^\s*FREEZE_AT:\s*0\b', f.read(), re.M) is not None
        assert freeze_at == (0 if says_zero else 2), name
        zero += says_zero
    assert zero == (2 if folder == 'detectron_configs' else 0)
    gn_body = btn.config_body(os.path.join(ROOT, GN_CFG))[0]
    bn_body = btn.config_body(os.path.join(ROOT, btn.CONFIG))[0]
    assert btn.tv_model_for('auto', gn_body) == 'gn'
    assert btn.tv_model_for('auto', bn_body) == 'frozen_bn'
    assert btn.tv_model_for('frozen_bn', gn_body) == 'frozen_bn'


def test_parse_args_tv_model(capsys):
    assert btn.parse_args([]).tv_model == 'auto'
    assert btn.parse_args(['--tv-model', 'gn']).tv_model == 'gn'
    with pytest.raises(SystemExit) as e:
        btn.parse_args(['--tv-model', 'bn'])
    assert e.value.code == 2
    assert "--tv-model: invalid choice: 'bn'" in capsys.readouterr().err


def _torchvision():
    """torchvision, or a skip (not installed beside a CPU torch); PYDETECTRON_TV_SHIM=1 lets a
    torchvision wheel built for another torch import here (dev/tv_cpu_shim.py)."""
    btn._tv_cpu_shim()
    try:
        import torchvision  # noqa: F401
    except Exception as e:      # not installed, or its compiled ops do not match this torch
        pytest.skip('torchvision cannot be imported here: %s' % e)


def _ours(config):
    from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                         merge_cfg_from_list, reset_cfg)
    from pydetectron.modeling.model_builder import Generalized_RCNN
    reset_cfg()
    try:
        merge_cfg_from_file(os.path.join(ROOT, config))
        merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False])
        assert_and_infer_cfg()
        return Generalized_RCNN()
    finally:
        reset_cfg()


@pytest.mark.parametrize('config', [
    GN_CFG, 'configs/gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml'])
def test_torchvision_group_norm_model_is_ours_layer_for_layer(config):
    """--tv-model gn: torchvision's parts put together as Detectron's GroupNorm Mask R-CNN have
    ours' parameters exactly -- every tensor's shape, the trained ones (FREEZE_AT 0 and 2), and
    every GroupNorm's channels, groups and epsilon -- at ours' 81 classes."""
    _torchvision()
    from torch import nn
    group_norm, freeze_at = btn.config_body(os.path.join(ROOT, config))
    assert group_norm
    ours = _ours(config)
    tv = btn.torchvision_mask_rcnn('gn', 800, 1333, num_classes=81, freeze_at=freeze_at)

    def summary(model):
        shapes = sorted(tuple(p.shape) for p in model.parameters())
        trained = sorted(tuple(p.shape) for p in model.parameters() if p.requires_grad)
        norms = sorted((m.num_channels, m.num_groups, m.eps) for m in model.modules()
                       if isinstance(m, nn.GroupNorm))
        others = [type(m).__name__ for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._NormBase)]
        return shapes, trained, norms, others

    s_ours, s_tv = summary(ours), summary(tv)
    assert len(s_ours[2]) == 69                  # stem + 52 in the blocks + 8 FPN + 4 + 4 heads
    assert s_tv == s_ours
    assert len(s_tv[1]) < len(s_tv[0]) if freeze_at else len(s_tv[1]) == len(s_tv[0])

