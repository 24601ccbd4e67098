"""Issue 16, item 1: every tool, run as a user runs it (a subprocess), answers a bad input of each
class -- flag, config value, dataset, image, checkpoint, output folder -- with ONE line
``<tool>: error: <message>`` naming the input, exit status 2 and no traceback; and a bad image at
test time is a counted skip naming the file, never a traceback.

The inputs are made here: a tiny COCO json of three shapes images (one truncated), the thin
shapes model's weights (built, not trained: only their names and shapes matter), a truncated
copy, a weights-only file, a Detectron pickle lacking a blob."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, THIN_CFG

SMALL = ['TEST.SCALE', '64', 'TEST.MAX_SIZE', '96', 'TEST.RPN_PRE_NMS_TOP_N', '100',
         'TEST.RPN_POST_NMS_TOP_N', '50']


# The first case of each tool runs it as a user does, in a subprocess (its ``__main__`` goes
# through run_tool); the others call the same ``run_tool(main, argv)`` in this process, which
# saves the ~3 s start of a Python with torch per case.
_IN_SUBPROCESS = set()


def run(tool, *args, timeout=240, in_subprocess=None):
    """(returncode, stdout, stderr) of ``tools/<tool> args``."""
    if in_subprocess is None:
        in_subprocess = tool not in _IN_SUBPROCESS
    argv = [str(a) for a in args]
    if in_subprocess:
        _IN_SUBPROCESS.add(tool)
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool)] + argv,
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    import contextlib
    import importlib
    import io
    from pydetectron.core.config import reset_cfg
    from pydetectron.engine.cli import run_tool
    if os.path.join(ROOT, 'tools') not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, 'tools'))
    module = importlib.import_module(tool[:-len('.py')])
    reset_cfg()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_tool(module.main, argv, prog=tool)
    finally:
        reset_cfg()
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


def assert_one_line_error(proc, tool, *expected):
    """Exit 2; stderr's last line is the only error line, names ``expected``; no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert 'Traceback' not in err, err[-3000:]
    lines = [l for l in err.splitlines() if 'error' in l.lower()]
    assert len(lines) == 1, err[-3000:]
    assert err.rstrip().splitlines()[-1] == lines[0]
    assert lines[0].startswith('%s: error: ' % tool), lines[0]
    for e in expected:
        assert str(e) in lines[0], (e, lines[0])


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_inputs')
    # a tiny dataset: two good shapes images and a truncated one
    src = os.path.join(ROOT, 'data', 'shapes', 'annotations', 'shapes_val.json')
    with open(src) as f:
        data = json.load(f)
    images = data['images'][:3]
    ids = {im['id'] for im in images}
    im_dir = root / 'images'
    im_dir.mkdir()
    for im in images:
        raw = open(os.path.join(ROOT, 'data', 'shapes', 'shapes_val', im['file_name']),
                   'rb').read()
        (im_dir / im['file_name']).write_bytes(raw)
    truncated_name = images[2]['file_name']
    raw = (im_dir / truncated_name).read_bytes()
    (im_dir / truncated_name).write_bytes(raw[:len(raw) // 2])
    tiny = dict(data, images=images,
                annotations=[a for a in data['annotations'] if a['image_id'] in ids])
    ann = root / 'tiny.json'
    ann.write_text(json.dumps(tiny))
    text = ann.read_text()
    (root / 'truncated.json').write_text(text[:len(text) // 2])
    dup = dict(tiny, images=tiny['images'] + [dict(tiny['images'][0])])
    (root / 'duplicate_ids.json').write_text(json.dumps(dup))

    # the thin model's weights (random init) in the formats the tools read
    from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, reset_cfg
    from pydetectron.modeling.model_builder import Generalized_RCNN
    from pydetectron.engine import checkpoint as ck
    from pydetectron.engine.optimizer import build_optimizer
    from pydetectron.core.config import cfg
    from pydetectron.utils.detectron_weight_helper import detectron_blobs_of
    reset_cfg()
    merge_cfg_from_file(THIN_CFG)
    assert_and_infer_cfg(make_immutable=False)
    torch.manual_seed(0)
    model = Generalized_RCNN()
    out = root / 'run'
    full = ck.save_checkpoint(str(out), 3, model, build_optimizer(model, cfg.SOLVER))
    weights_only = root / 'weights_only.pth'
    torch.save({'model': model.state_dict()}, str(weights_only))
    raw = open(full, 'rb').read()
    truncated_ckpt = root / 'truncated.pth'
    truncated_ckpt.write_bytes(raw[:len(raw) // 3])
    blobs = {blob: t.detach().numpy() for _, t, blob in detectron_blobs_of(model)}
    missing_blob = sorted(blobs)[0]
    del blobs[missing_blob]
    pkl = root / 'missing_blob.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump({'blobs': blobs}, f, protocol=2)
    reset_cfg()
    a_file = root / 'a_file'
    a_file.write_text('not a folder')
    results = root / 'results.json'
    results.write_text('[{"image_id": 1, "category_id": 1, "bbox": [1, 2')
    return dict(root=root, im_dir=im_dir, ann=ann, spec='coco_json:%s:%s' % (ann, im_dir),
                truncated_json='coco_json:%s:%s' % (root / 'truncated.json', im_dir),
                duplicate_json='coco_json:%s:%s' % (root / 'duplicate_ids.json', im_dir),
                truncated_image=im_dir / truncated_name, good_image=im_dir / images[0]['file_name'],
                ckpt=full, weights_only=weights_only, truncated_ckpt=truncated_ckpt,
                pkl=pkl, missing_blob=missing_blob, not_a_folder=a_file / 'out',
                a_file=a_file, results=results)


# ---------------------------------------------------------------------------------------------- #
# train_net_step.py
# ---------------------------------------------------------------------------------------------- #

def _train(inputs, *args, dataset=None):
    return run('train_net_step.py', '--dataset', dataset or inputs['spec'], '--cfg', THIN_CFG,
               '--no_cuda', '--nw', '0', *args)


@pytest.mark.parametrize('case', ['bs 0', 'odd --set', 'nw negative', 'lr nan', 'no --cfg file',
                                  'scale 0', 'max size 0', 'truncated json', 'duplicate ids',
                                  'truncated ckpt', 'weights-only --resume',
                                  'ckpt of another architecture', 'detectron pkl missing blob',
                                  'output folder under a file'])
def test_train_net_step(inputs, tmp_path, case):
    out = ['--output_dir', tmp_path / 'out']
    tool = 'train_net_step.py'
    if case == 'bs 0':
        assert_one_line_error(_train(inputs, '--bs', '0', *out), tool, '--bs', "'0'")
    elif case == 'odd --set':
        assert_one_line_error(_train(inputs, *out, '--set', 'TRAIN.SCALES'), tool,
                              '--set takes KEY VALUE pairs', 'TRAIN.SCALES')
    elif case == 'nw negative':
        assert_one_line_error(_train(inputs, *out, '--nw', '-1'), tool, '--nw', "'-1'")
    elif case == 'lr nan':
        assert_one_line_error(_train(inputs, *out, '--lr', 'nan'), tool, '--lr', "'nan'")
    elif case == 'no --cfg file':
        proc = run(tool, '--dataset', inputs['spec'], '--cfg', tmp_path / 'nope.yaml', *out)
        assert_one_line_error(proc, tool, '--cfg', 'nope.yaml', 'not found')
    elif case == 'scale 0':
        assert_one_line_error(_train(inputs, *out, '--set', 'TRAIN.SCALES', '(0,)'), tool,
                              'TRAIN.SCALES is (0,)', 'integers > 0')
    elif case == 'max size 0':
        assert_one_line_error(_train(inputs, *out, '--set', 'TRAIN.MAX_SIZE', '0'), tool,
                              'TRAIN.MAX_SIZE is 0', 'an integer > 0')
    elif case == 'truncated json':
        assert_one_line_error(_train(inputs, *out, dataset=inputs['truncated_json']), tool,
                              'truncated.json is not valid JSON (truncated?)')
    elif case == 'duplicate ids':
        assert_one_line_error(_train(inputs, *out, dataset=inputs['duplicate_json']), tool,
                              'duplicate_ids.json', 'duplicate image ids')
    elif case == 'truncated ckpt':
        assert_one_line_error(_train(inputs, *out, '--load_ckpt', inputs['truncated_ckpt']),
                              tool, '--load_ckpt', 'truncated.pth', 'incomplete')
    elif case == 'weights-only --resume':
        assert_one_line_error(_train(inputs, *out, '--resume', '--load_ckpt',
                                     inputs['weights_only']),
                              tool, '--resume', 'weights_only.pth', 'holds model weights only')
    elif case == 'ckpt of another architecture':
        assert_one_line_error(_train(inputs, *out, '--load_ckpt', inputs['ckpt'],
                                     '--set', 'FPN.DIM', '32'),
                              tool, '--load_ckpt', inputs['ckpt'], 'shape mismatch', '(64, ',
                              '(32, ')
    elif case == 'detectron pkl missing blob':
        assert_one_line_error(_train(inputs, *out, '--load_detectron', inputs['pkl']),
                              tool, 'missing_blob.pkl', inputs['missing_blob'], 'missing')
    elif case == 'output folder under a file':
        assert_one_line_error(_train(inputs, '--output_dir', inputs['not_a_folder']), tool,
                              '--output_dir', str(inputs['a_file']), 'not a folder')


def test_train_net_step_all_images_unreadable(inputs, tmp_path):
    """Training replaces an unreadable image (counted warning); a dataset whose images are all
    unreadable ends in one line naming the image, not a traceback."""
    root = tmp_path
    data = json.loads(inputs['ann'].read_text())
    bad_dir = root / 'bad_images'
    bad_dir.mkdir()
    for im in data['images']:
        # truncated: the header (and so the sampled size check) is fine, the pixels are not
        raw = (inputs['good_image']).read_bytes()
        (bad_dir / im['file_name']).write_bytes(raw[:len(raw) // 2])
    spec = 'coco_json:%s:%s' % (inputs['ann'], bad_dir)
    proc = _train(inputs, '--output_dir', root / 'out', '--bs', '1', '--set',
                  'TRAIN.SCALES', '(64,)', 'TRAIN.MAX_SIZE', '96', 'SOLVER.MAX_ITER', '2',
                  dataset=spec)
    assert_one_line_error(proc, 'train_net_step.py', 'unreadable images in a row', 'bad_images')


# ---------------------------------------------------------------------------------------------- #
# test_net.py and infer_simple.py
# ---------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize('case', ['no weights flag', 'bad range', 'odd --set', 'test scale 0',
                                  'truncated json', 'truncated ckpt', 'detectron pickle as ckpt',
                                  'ckpt of another architecture', 'detectron pkl missing blob',
                                  'output folder under a file'])
def test_test_net(inputs, tmp_path, case):
    tool = 'test_net.py'
    base = ['--dataset', inputs['spec'], '--cfg', THIN_CFG, '--no_cuda', '--quiet',
            '--output_dir', tmp_path / 'out']
    ckpt = ['--load_ckpt', inputs['ckpt']]
    if case == 'no weights flag':
        # no flag and no TEST.WEIGHTS in the config (TEST.WEIGHTS is the default, as in Detectron)
        assert_one_line_error(run(tool, *base), tool, 'give --load_ckpt or --load_detectron',
                              'TEST.WEIGHTS')
    elif case == 'bad range':
        assert_one_line_error(run(tool, *base, *ckpt, '--range', '5', '2'), tool, '--range 5 2')
    elif case == 'odd --set':
        assert_one_line_error(run(tool, *base, *ckpt, '--set', 'TEST.SCALE'), tool, '--set')
    elif case == 'test scale 0':
        assert_one_line_error(run(tool, *base, *ckpt, '--set', 'TEST.SCALE', '0'), tool,
                              'TEST.SCALE is 0')
    elif case == 'truncated json':
        proc = run(tool, '--dataset', inputs['truncated_json'], '--cfg', THIN_CFG, '--no_cuda',
                   '--output_dir', tmp_path / 'out', *ckpt)
        assert_one_line_error(proc, tool, 'truncated.json is not valid JSON')
    elif case == 'truncated ckpt':
        assert_one_line_error(run(tool, *base, '--load_ckpt', inputs['truncated_ckpt']), tool,
                              '--load_ckpt', 'truncated.pth', 'incomplete')
    elif case == 'detectron pickle as ckpt':
        assert_one_line_error(run(tool, *base, '--load_ckpt', inputs['pkl']), tool,
                              'missing_blob.pkl', '--load_detectron')
    elif case == 'ckpt of another architecture':
        assert_one_line_error(run(tool, *base, *ckpt, '--set', 'FPN.DIM', '32'), tool,
                              '--load_ckpt', 'shape mismatch', '(64, ', '(32, ')
    elif case == 'detectron pkl missing blob':
        assert_one_line_error(run(tool, *base, '--load_detectron', inputs['pkl']), tool,
                              inputs['missing_blob'], 'missing from the file')
    elif case == 'output folder under a file':
        proc = run(tool, '--dataset', inputs['spec'], '--cfg', THIN_CFG, '--no_cuda', *ckpt,
                   '--output_dir', inputs['not_a_folder'])
        assert_one_line_error(proc, tool, '--output_dir', 'not a folder')


@pytest.mark.slow
def test_test_net_skips_a_truncated_image_with_a_count(inputs, tmp_path):
    proc = run('test_net.py', '--dataset', inputs['spec'], '--cfg', THIN_CFG, '--no_cuda',
               '--quiet', '--load_ckpt', inputs['ckpt'], '--output_dir', tmp_path / 'out',
               '--set', *SMALL, in_subprocess=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'Traceback' not in log
    assert 'Skipping image %s' % inputs['truncated_image'] in log, log[-3000:]
    assert 'is a truncated JPEG' in log
    assert 'Skipped 1 of 3 images that could not be read: %s' % inputs['truncated_image'] in log
    assert (tmp_path / 'out' / 'detections.pkl').exists()


@pytest.mark.parametrize('case', ['no image dir', 'thresh 2', 'set odd', 'max size -1',
                                  'truncated dataset json', 'truncated ckpt', 'weights of '
                                  'another architecture', 'detectron pkl missing blob',
                                  'output folder under a file'])
def test_infer_simple(inputs, tmp_path, case):
    tool = 'infer_simple.py'
    base = ['--cfg', THIN_CFG, '--no_cuda', '--dataset', inputs['spec'],
            '--output_dir', tmp_path / 'out']
    images = ['--images', inputs['good_image']]
    ckpt = ['--load_ckpt', inputs['ckpt']]
    if case == 'no image dir':
        assert_one_line_error(run(tool, *base, *ckpt, '--image_dir', tmp_path / 'nope'), tool,
                              '--image_dir', 'is not a directory')
    elif case == 'thresh 2':
        assert_one_line_error(run(tool, *base, *ckpt, *images, '--thresh', '2'), tool,
                              '--thresh 2')
    elif case == 'set odd':
        assert_one_line_error(run(tool, *base, *ckpt, *images, '--set', 'TEST.SCALE'), tool,
                              '--set')
    elif case == 'max size -1':
        assert_one_line_error(run(tool, *base, *ckpt, *images, '--set', 'TEST.MAX_SIZE', '-1'),
                              tool, 'TEST.MAX_SIZE is -1')
    elif case == 'truncated dataset json':
        proc = run(tool, '--cfg', THIN_CFG, '--no_cuda', '--dataset', inputs['truncated_json'],
                   '--output_dir', tmp_path / 'out', *ckpt, *images)
        assert_one_line_error(proc, tool, 'truncated.json is not valid JSON')
    elif case == 'truncated ckpt':
        assert_one_line_error(run(tool, *base, *images, '--load_ckpt', inputs['truncated_ckpt']),
                              tool, '--load_ckpt', 'truncated.pth')
    elif case == 'weights of another architecture':
        assert_one_line_error(run(tool, *base, *ckpt, *images, '--set', 'FPN.DIM', '32'), tool,
                              '--load_ckpt', 'shape mismatch')
    elif case == 'detectron pkl missing blob':
        assert_one_line_error(run(tool, *base, *images, '--load_detectron', inputs['pkl']),
                              tool, inputs['missing_blob'], 'missing from the file')
    elif case == 'output folder under a file':
        proc = run(tool, '--cfg', THIN_CFG, '--no_cuda', '--dataset', inputs['spec'], *ckpt,
                   *images, '--output_dir', inputs['not_a_folder'])
        assert_one_line_error(proc, tool, '--output_dir', 'not a folder')


@pytest.mark.slow
def test_infer_simple_skips_a_truncated_image_with_a_count(inputs, tmp_path):
    proc = run('infer_simple.py', '--cfg', THIN_CFG, '--no_cuda', '--dataset', inputs['spec'],
               '--load_ckpt', inputs['ckpt'], '--output_dir', tmp_path / 'out', '--images',
               inputs['good_image'], inputs['truncated_image'], '--set', *SMALL,
               in_subprocess=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'Traceback' not in log
    assert 'Skipping image %s is a truncated JPEG' % inputs['truncated_image'] in log
    assert 'Skipped 1 of 2 images that could not be read' in log
    with open(tmp_path / 'out' / 'detections.json') as f:
        assert [r['image'] for r in json.load(f)['images']] == [str(inputs['good_image'])]


# ---------------------------------------------------------------------------------------------- #
# analyze_results.py, download_imagenet_weights.py, check_dataset.py
# ---------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize('case', ['iou', 'missing results', 'truncated results',
                                  'truncated dataset json', 'output folder under a file'])
def test_analyze_results(inputs, tmp_path, case):
    tool = 'analyze_results.py'
    if case == 'iou':
        proc = run(tool, '--dataset', inputs['spec'], '--results', inputs['results'],
                   '--iou', '0.33')
        assert_one_line_error(proc, tool, '--iou 0.33')
    elif case == 'missing results':
        proc = run(tool, '--dataset', inputs['spec'], '--results', tmp_path / 'nope.json')
        assert_one_line_error(proc, tool, '--results', 'nope.json', 'not found')
    elif case == 'truncated results':
        proc = run(tool, '--dataset', inputs['spec'], '--results', inputs['results'],
                   '--output_dir', tmp_path)
        assert_one_line_error(proc, tool, '--results', 'results.json', 'not valid JSON')
    elif case == 'truncated dataset json':
        proc = run(tool, '--dataset', inputs['truncated_json'], '--results', inputs['results'],
                   '--output_dir', tmp_path)
        assert_one_line_error(proc, tool, 'truncated.json is not valid JSON')
    elif case == 'output folder under a file':
        proc = run(tool, '--dataset', inputs['spec'], '--results', inputs['results'],
                   '--output_dir', inputs['not_a_folder'])
        assert_one_line_error(proc, tool, '--output_dir', 'not a folder')


@pytest.mark.parametrize('case', ['unknown name', 'timeout 0', 'dest under a file',
                                  'bad url'])
def test_download_imagenet_weights(inputs, tmp_path, case):
    tool = 'download_imagenet_weights.py'
    if case == 'unknown name':
        proc = run(tool, 'R-18.pkl', '--dest', tmp_path)
        assert_one_line_error(proc, tool, "Unknown weights 'R-18.pkl'", 'R-50.pkl')
    elif case == 'timeout 0':
        assert_one_line_error(run(tool, '--timeout', '0', '--dest', tmp_path), tool, '--timeout')
    elif case == 'dest under a file':
        assert_one_line_error(run(tool, 'R-50.pkl', '--dest', inputs['not_a_folder']), tool,
                              '--dest', 'not a folder')
    elif case == 'bad url':
        assert_one_line_error(run(tool, 'R-50.pkl', '--dest', tmp_path, '--base_url',
                                  'ftp:/x'), tool, '--base_url')


def test_check_dataset(inputs, tmp_path):
    tool = 'check_dataset.py'
    assert_one_line_error(run(tool, '--dataset', inputs['truncated_json']), tool,
                          'truncated.json is not valid JSON')
    assert_one_line_error(run(tool, '--dataset', inputs['duplicate_json']), tool,
                          'duplicate image ids')
    assert_one_line_error(run(tool, '--dataset', inputs['spec'], '--sample', '-1'), tool,
                          '--sample')
    # a usable dataset with a truncated image: the report names it, exit 1 (records skipped)
    proc = run(tool, '--dataset', inputs['spec'], '--all_images')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'is a truncated JPEG' in proc.stdout and 'skipped 0 of' in proc.stdout
    assert 'and 1 of 3 images' in proc.stdout
