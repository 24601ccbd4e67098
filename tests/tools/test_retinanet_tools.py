"""RetinaNet through the user's tools: train_net_step.py (a few steps of the shapes quick start),
test_net.py (COCO box AP on shapes_val, boxes only) and infer_simple.py (drawings and json)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join('configs', 'getting_started', 'shapes_retinanet_R-FPN-thin_gn_cpu.yaml')


def _run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_train_test_infer(tmp_path):
    out = tmp_path / 'run'
    log = _run(['tools/train_net_step.py', '--dataset', 'shapes', '--cfg', CFG, '--no_cuda',
                '--nw', '0', '--output_dir', str(out), '--set', 'SOLVER.MAX_ITER', '3',
                'SOLVER.WARM_UP_ITERS', '2', 'SOLVER.STEPS', '[0]'])
    assert 'fl_fpn3' in log and 'retnet_loss_bbox_fpn3' in log
    ckpt = out / 'ckpt' / 'model_step2.pth'
    assert ckpt.is_file()

    log = _run(['tools/test_net.py', '--dataset', 'shapes', '--cfg', CFG, '--load_ckpt',
                str(ckpt), '--output_dir', str(tmp_path / 'test'), '--no_cuda', '--quiet',
                '--set', 'TEST.DETECTIONS_PER_IM', '5'])
    assert re.search(r'copypaste: Task: box', log)
    assert 'Task: segm' not in log

    images = tmp_path / 'images'
    images.mkdir()
    import numpy as np
    import cv2
    cv2.imwrite(str(images / 'a.jpg'),
                (np.random.RandomState(0).rand(120, 160, 3) * 255).astype(np.uint8))
    _run(['tools/infer_simple.py', '--dataset', 'shapes', '--cfg', CFG, '--load_ckpt',
          str(ckpt), '--image_dir', str(images), '--output_dir', str(tmp_path / 'vis'),
          '--output_ext', 'jpg', '--no_cuda', '--thresh', '0.0'])
    with open(tmp_path / 'vis' / 'detections.json') as f:
        dets = json.load(f)
    assert len(dets['images']) == 1 and len(dets['images'][0]['detections']) > 0
