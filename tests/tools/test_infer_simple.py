"""tools/infer_simple.py over ../shared/demo_images with a small randomly initialised Mask R-CNN:
one valid picture per image, a JSON of the detections, clear errors for bad folders."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'infer_simple.py')
DEMO_IMAGES = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'demo_images'))


def _load(name, rel_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def small_model(tmp_path_factory):
    """Config and checkpoint of a randomly initialised 4-class Mask R-CNN, and a dataset naming
    its classes (blue, green, red)."""
    from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, reset_cfg
    from pydetectron.modeling.model_builder import Generalized_RCNN
    root = tmp_path_factory.mktemp('infer_simple')
    test_net_tests = _load('_test_net_tests', 'tests/tools/test_test_net.py')
    engine_tests = _load('_engine_tests', 'tests/core/test_test_engine.py')
    dataset = engine_tests.make_rect_dataset(str(root / 'data'), num_images=1)
    cfg_file = root / 'small.yaml'
    cfg_file.write_text(test_net_tests.SMALL_MASK_RCNN.replace('SCALE: 120', 'SCALE: 160'))
    reset_cfg()
    merge_cfg_from_file(str(cfg_file))
    assert_and_infer_cfg()
    torch.manual_seed(0)
    ckpt = root / 'model.pth'
    torch.save({'model': Generalized_RCNN().state_dict()}, str(ckpt))
    reset_cfg()
    return root, dataset, str(cfg_file), str(ckpt)


def _run(args):
    return subprocess.run([sys.executable, TOOL] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_demo_images_give_one_picture_each_and_a_json(small_model):
    if not os.path.isdir(DEMO_IMAGES):
        pytest.skip('../shared/demo_images not present')
    root, dataset, cfg_file, ckpt = small_model
    out_dir = root / 'out'
    proc = _run(['--cfg', cfg_file, '--load_ckpt', ckpt, '--image_dir', DEMO_IMAGES,
                 '--output_dir', str(out_dir), '--dataset', dataset, '--thresh', '0.2',
                 '--output_ext', 'jpg', '--no_cuda'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inputs = sorted(f for f in os.listdir(DEMO_IMAGES) if f.lower().endswith('.jpg'))
    others = sorted(f for f in os.listdir(DEMO_IMAGES) if not f.lower().endswith('.jpg'))
    for name in others:  # e.g. the NOTICE file: skipped, and said so
        assert 'Skipping %s' % os.path.join(DEMO_IMAGES, name) in proc.stdout
    outputs = sorted(f for f in os.listdir(out_dir) if f.endswith('.jpg'))
    assert outputs == [os.path.splitext(f)[0] + '.jpg' for f in inputs]
    with open(out_dir / 'detections.json') as f:
        record = json.load(f)
    assert record['thresh'] == 0.2 and len(record['images']) == len(inputs)
    drawn_any = False
    for entry, name in zip(record['images'], inputs):
        src = cv2.imread(os.path.join(DEMO_IMAGES, name))
        out = cv2.imread(entry['output'])
        assert out is not None and abs(out.shape[0] - src.shape[0]) <= 2 \
            and abs(out.shape[1] - src.shape[1]) <= 2
        assert (entry['height'], entry['width']) == src.shape[:2]
        for det in entry['detections']:
            assert det['class_name'] in ('blue', 'green', 'red') and det['score'] >= 0.2
            # clipped to the image (a box under one pixel high may have y2 < y1, as in Detectron)
            x1, y1, x2, y2 = det['bbox']
            assert 0 <= min(x1, x2) and max(x1, x2) <= src.shape[1] - 1
            assert 0 <= min(y1, y2) and max(y1, y2) <= src.shape[0] - 1
            assert det['segmentation']['size'] == list(src.shape[:2])
            drawn_any = True
    assert drawn_any  # the random 4-class model scores ~1/4: something above 0.2 is drawn


def test_missing_or_empty_folder_is_a_clear_error(small_model, tmp_path):
    root, dataset, cfg_file, ckpt = small_model
    proc = _run(['--cfg', cfg_file, '--load_ckpt', ckpt, '--image_dir', str(tmp_path / 'nope')])
    assert proc.returncode != 0 and 'is not a directory' in proc.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'README.txt').write_text('no pictures here')
    proc = _run(['--cfg', cfg_file, '--load_ckpt', ckpt, '--image_dir', str(empty)])
    assert proc.returncode != 0 and 'no image files' in proc.stderr
    assert 'Skipping' in proc.stdout
    proc = _run(['--cfg', cfg_file, '--image_dir', str(empty)])
    assert proc.returncode != 0 and '--load_ckpt' in proc.stderr
