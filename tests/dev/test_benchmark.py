"""dev/benchmark.py and its modules (dev/bench/) on the CPU: the synthetic COCO data, torchvision's
inputs made from our blob, the batch-size search, the step timer, and one tiny end-to-end run
(--no-peer) with its JSON."""
import json
import os
import sys
import time
import types

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import benchmark  # noqa: E402
from bench import models, options, timing  # noqa: E402
from bench.data import NUM_IMAGE_FILES, make_synthetic_coco  # noqa: E402

# A tiny problem: 64x96 images, few proposals and RoIs, few detections (the mask head's work).
SMALL = ['--device', 'cpu', '--image_size', '64x96', '--objects', '2', '--no-peer',
         '--warmup', '0', '--iters', '1', '--infer_batch', '2',
         '--set', 'TRAIN.RPN_PRE_NMS_TOP_N', '100', 'TRAIN.RPN_POST_NMS_TOP_N', '50',
         'TRAIN.BATCH_SIZE_PER_IM', '16', 'TEST.RPN_PRE_NMS_TOP_N', '50',
         'TEST.RPN_POST_NMS_TOP_N', '20', 'TEST.DETECTIONS_PER_IM', '5']


def _args(*extra):
    args = options.parse_args(SMALL + list(extra))
    args.device = torch.device('cpu')
    return args


def test_synthetic_coco_is_valid_coco(tmp_path):
    spec = make_synthetic_coco(str(tmp_path), num_images=10, height=64, width=96,
                                         objects=3, keypoints=True)
    assert spec.startswith('coco_json:')
    with open(tmp_path / 'synthetic.json') as f:
        data = json.load(f)
    assert len(data['images']) == 10 and len(data['annotations']) == 30
    assert len(os.listdir(tmp_path / 'images')) == NUM_IMAGE_FILES
    (cat,) = data['categories']
    assert cat['name'] == 'person' and len(cat['keypoints']) == 17
    for ann in data['annotations']:
        poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
        assert poly.min() >= 0 and poly[:, 0].max() <= 95 and poly[:, 1].max() <= 63
        x, y, w, h = ann['bbox']
        # COCO box = the polygon's extent (Detectron's +1: x2 = x + w - 1)
        assert (x, y) == pytest.approx(tuple(poly.min(0)))
        assert (x + w - 1, y + h - 1) == pytest.approx(tuple(poly.max(0)))
        rle = mask_util.frPyObjects(ann['segmentation'], 64, 96)
        assert ann['area'] == pytest.approx(float(mask_util.area(rle).sum()), rel=0.35, abs=20)
        kps = np.array(ann['keypoints']).reshape(-1, 3)
        assert kps.shape == (17, 3) and (kps[:, 2] == 2).all()
        assert (kps[:, 0] >= x - 1).all() and (kps[:, 0] <= x + w).all()
        assert (kps[:, 1] >= y - 1).all() and (kps[:, 1] <= y + h).all()
    # image i reuses file i % 8 with the same objects
    by_image = {}
    for ann in data['annotations']:
        by_image.setdefault(ann['image_id'], []).append(ann['segmentation'])
    assert by_image[1] == by_image[1 + NUM_IMAGE_FILES]


@pytest.mark.parametrize('model_name', ['mask', 'keypoint'])
def test_peer_inputs_are_the_same_images_and_ground_truth(model_name, tmp_path, fresh_cfg,
                                                          registry_env):
    args = _args()
    spec = make_synthetic_coco(str(tmp_path), 8, 64, 96, 3, model_name == 'keypoint')
    names = models.configure(model_name, spec, 2, args)
    assert fresh_cfg.TRAIN.IMS_PER_BATCH == 2 and fresh_cfg.TRAIN.SCALES == (64,)
    data, im_info, gt = models.load_batch(names, 2, torch.device('cpu'))
    assert data.shape == (2, 3, 64, 96) and (im_info[:, 2] == 1).all()   # no resize
    images, targets = models.peer_inputs(data, im_info, gt, model_name)
    for im, t, entry in zip(images, targets, gt):
        # RGB in [0, 1] equal to the JPEG as decoded
        bgr = cv2.imread(entry['image'])
        expected = torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy()).float() / 255.
        torch.testing.assert_close(im, expected, atol=1e-5, rtol=0)
        g = entry['gt_boxes'].shape[0]
        assert g == 3
        torch.testing.assert_close(t['boxes'][:, :2], entry['gt_boxes'][:, :2])
        torch.testing.assert_close(t['boxes'][:, 2:], entry['gt_boxes'][:, 2:] + 1)
        assert t['labels'].dtype == torch.int64 and (t['labels'] >= 1).all()
        if model_name == 'mask':
            assert t['masks'].shape == (3, 64, 96) and t['masks'].dtype == torch.uint8
            for m, box in zip(t['masks'], t['boxes']):
                ys, xs = torch.nonzero(m, as_tuple=True)
                # the rasterised polygon fills its box up to a pixel
                assert xs.min() >= box[0] - 1 and xs.max() <= box[2]
                assert ys.min() >= box[1] - 1 and ys.max() <= box[3]
                assert m.sum() > 0.4 * (box[2] - box[0]) * (box[3] - box[1])
        else:
            assert 'masks' not in t
            assert t['keypoints'].shape == (3, 17, 3) and (t['keypoints'][..., 2] == 2).all()
            torch.testing.assert_close(t['keypoints'][:, :, 0],
                                       entry['gt_keypoints'][:, 0, :])


def test_batch_search_stops_at_the_first_batch_that_does_not_fit(monkeypatch):
    tried = []

    def fake(model_name, impl, spec, bs, precision, args):
        tried.append((bs, args.warmup, args.iters))
        return {'status': 'ok' if bs <= 8 else 'oom'}
    monkeypatch.setattr(timing, 'measure_training', fake)
    args = _args()
    assert timing.batch_sizes_to_time('mask', 'spec', 'fp32', args) == [2, 8]
    assert tried == [(4, 0, 1), (8, 0, 1), (16, 0, 1)]   # one step per probe
    args.max_batch = 4
    assert timing.batch_sizes_to_time('mask', 'spec', 'fp32', args) == [2, 4]
    args.max_batch = 3
    assert timing.batch_sizes_to_time('mask', 'spec', 'fp32', args) == [2]
    args.batch_sizes = [2, 6]
    assert timing.batch_sizes_to_time('mask', 'spec', 'fp32', args) == [2, 6]


def test_time_steps_takes_the_median_after_the_warm_up():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.01)   # a slow first (warm-up) step
    args = types.SimpleNamespace(warmup=1, iters=5, max_seconds=10.)
    med, p10, p90, n = timing.time_steps(step, torch.device('cpu'), args)
    assert n == 5 and len(calls) == 6
    assert 0.009 < med < 0.1 and p10 <= med <= p90
    # out of time: still at least 3 timed steps
    calls.clear()
    args = types.SimpleNamespace(warmup=0, iters=50, max_seconds=0.)
    assert timing.time_steps(step, torch.device('cpu'), args)[3] == 3


def test_parse_args_errors():
    with pytest.raises(SystemExit):
        options.parse_args(['--models', 'mask,cascade'])
    with pytest.raises(SystemExit):
        options.parse_args(['--image_size', '800'])
    with pytest.raises(SystemExit):
        options.parse_args(['--amp', '--fp32'])
    args = options.parse_args(['--amp', '--batch_sizes', '2,16', '--parts', 'train'])
    assert args.precisions == ('bf16',) and args.batch_sizes == [2, 16]
    assert options.parse_args([]).precisions == ('fp32', 'bf16')


@pytest.mark.slow
def test_cpu_run_end_to_end(tmp_path, fresh_cfg, registry_env, capsys):
    out = tmp_path / 'bench.json'
    benchmark.main(SMALL + ['--fp32', '--batch_sizes', '2', '--loader_workers', '0',
                            '--loader_iters', '2', '--json', str(out)])
    with open(out) as f:
        report = json.load(f)
    assert report['machine']['device'] == 'cpu'
    by_part = {}
    for r in report['results']:
        by_part.setdefault(r['part'], []).append(r)
    (train,) = by_part['train']
    assert (train['model'], train['impl'], train['precision'], train['batch'],
            train['status']) == ('mask', 'ours', 'fp32', 2, 'ok')
    assert train['images_per_s'] == pytest.approx(2000. / train['step_ms'])
    (infer,) = by_part['infer']
    assert infer['status'] == 'ok' and infer['batch'] == 2
    assert infer['batch1_ms'] > 0 and infer['batchN_images_per_s'] > 0
    assert 0 <= infer['detections_per_image'] <= 5   # TEST.DETECTIONS_PER_IM
    (loader,) = by_part['loader']
    assert loader['workers'] == 0 and loader['images_per_s'] > 0
    printed = capsys.readouterr().out
    assert '== training' in printed and '== inference' in printed and '== data loader' in printed


@pytest.mark.slow
def test_cpu_bf16_training_step(tmp_path, fresh_cfg, registry_env):
    results = benchmark.main(SMALL + ['--amp', '--batch_sizes', '2', '--parts', 'train'])
    (train,) = results
    assert train['precision'] == 'bf16'
    assert train['status'] == 'ok', train.get('error')
    assert train['images_per_s'] > 0
