"""A checkpoint of a custom-dataset run carries its config, class names and dataset name:
infer_simple.py --load_ckpt X --image_dir Y needs nothing else and draws that dataset's classes;
an explicit dataset of other classes is one line (exit 2) in infer_simple.py and test_net.py."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')


def _load(name, rel_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two training steps of the thin GroupNorm quick-start model on a 3-class rect dataset."""
    import torch
    from pydetectron.core.config import reset_cfg
    from pydetectron.engine import checkpoint as ck
    from pydetectron.engine import launch
    root = tmp_path_factory.mktemp('self_describing')
    engine_tests = _load('_engine_tests_sd', 'tests/core/test_test_engine.py')
    dataset = engine_tests.make_rect_dataset(str(root / 'data'), num_images=3)
    train_net_step = _load('_train_net_step_sd', 'tools/train_net_step.py')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_cfg()
    try:
        args = train_net_step.parse_args([
            '--dataset', dataset, '--cfg', THIN_CFG, '--no_cuda', '--bs', '1', '--nw', '0',
            '--output_dir', str(root / 'run'),
            '--set', 'SOLVER.MAX_ITER', '2', 'TRAIN.SNAPSHOT_ITERS', '2', 'NUM_GPUS', '1',
            'TRAIN.SCALES', '(96,)', 'TRAIN.MAX_SIZE', '160', 'TEST.SCALE', '96',
            'TEST.MAX_SIZE', '160'])
        assert launch.main(args) == 0
    finally:
        torch.set_num_threads(threads)
        reset_cfg()
    ckpt = ck.find_latest_checkpoint(str(root / 'run'))
    return root, dataset, ckpt


def _run(tool, args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool)] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_checkpoint_carries_config_classes_and_dataset(trained):
    from pydetectron.engine.checkpoint import load_checkpoint
    root, dataset, ckpt = trained
    c = load_checkpoint(ckpt)
    assert c['classes'] == ['__background__', 'blue', 'green', 'red']
    assert c['dataset'].startswith('json_rects') and c['dataset_arg'] == dataset
    assert 'NUM_CLASSES: 4' in c['cfg'] and c['keypoint_names'] is None


@pytest.mark.slow
def test_infer_simple_needs_only_the_checkpoint(trained, tmp_path):
    root, dataset, ckpt = trained
    images = os.path.join(dataset.split(':')[2])
    out = tmp_path / 'out'
    proc = _run('infer_simple.py', ['--load_ckpt', ckpt, '--image_dir', images,
                                    '--output_dir', str(out), '--thresh', '0'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / 'detections.json') as f:
        records = json.load(f)['images']
    assert len(records) == 3
    names = {d['class_name'] for r in records for d in r['detections']}
    assert names and names <= {'blue', 'green', 'red'}, names
    # and with no other flag at all
    proc = _run('infer_simple.py', ['--load_ckpt', ckpt, '--image_dir', images,
                                    '--output_dir', str(tmp_path / 'plain')])
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_dataset_of_other_classes_is_one_line(trained, tmp_path):
    root, dataset, ckpt = trained
    images = os.path.join(dataset.split(':')[2])
    proc = _run('infer_simple.py', ['--load_ckpt', ckpt, '--image_dir', images, '--dataset',
                                    'coco', '--output_dir', str(tmp_path / 'x')])
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'trained on 3 classes (blue, green, red)' in err[0], proc.stderr
    # test_net.py with the saved config: its TEST.DATASETS (shapes_val) has other classes
    proc = _run('test_net.py', ['--load_ckpt', ckpt, '--no_cuda', '--output_dir',
                                str(tmp_path / 't')])
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'shapes_val' in err[0] and 'trained on 3 classes' in err[0], \
        proc.stderr


def _count_torch_loads(monkeypatch, path):
    """A list that grows by one at each torch.load of ``path``."""
    import torch
    loads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.abspath(f) == os.path.abspath(path):
            loads.append(f)
        return real_load(f, *args, **kwargs)
    monkeypatch.setattr(torch, 'load', counting_load)
    return loads


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['test_net.py', 'infer_simple.py'])
def test_the_checkpoint_is_read_once(trained, tmp_path, monkeypatch, tool):
    """The tools read the checkpoint's config and classes, then load its weights into the model
    built from that config: one torch.load of the file for both."""
    import torch
    from pydetectron.core.config import reset_cfg
    root, dataset, ckpt = trained
    loads = _count_torch_loads(monkeypatch, ckpt)
    module = _load('_once_' + tool[:-3], os.path.join('tools', tool))
    if tool == 'test_net.py':
        argv = ['--load_ckpt', ckpt, '--dataset', dataset, '--no_cuda', '--quiet',
                '--output_dir', str(tmp_path / 'test')]
    else:
        argv = ['--load_ckpt', ckpt, '--image_dir', dataset.split(':')[2],
                '--output_dir', str(tmp_path / 'infer')]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_cfg()
    try:
        module.main(argv)
    finally:
        torch.set_num_threads(threads)
        reset_cfg()
    assert len(loads) == 1, loads
    # and a read after the file changed reads it again (the kept object is for that file only)
    from pydetectron.engine import checkpoint_meta, initial_weights
    checkpoint_meta.read_metadata(ckpt)
    os.utime(ckpt, ns=(os.stat(ckpt).st_atime_ns, os.stat(ckpt).st_mtime_ns + 10 ** 9))
    initial_weights.read_torch_file(ckpt)
    assert len(loads) == 3
