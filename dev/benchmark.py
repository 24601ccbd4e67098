"""Time training and inference of the R-50-FPN detectors on synthetic COCO-like images, beside
torchvision's models on the same images.

    python tools/benchmark.py                                   # Mask R-CNN, fp32 and bf16
    python tools/benchmark.py --models mask,faster,keypoint --json bench.json
    python tools/benchmark.py --amp --batch_sizes 2,8,16 --no-peer
    python tools/benchmark.py --device cpu --image_size 96x160 --no-peer ...   (smoke test)

What is measured, for each model of ``--models`` (``mask`` = e2e_mask_rcnn_R-50-FPN_1x,
``faster`` = e2e_faster_rcnn_R-50-FPN_1x, ``keypoint`` = e2e_keypoint_rcnn_R-50-FPN_1x):

* **training** images/s of one optimizer step (forward, Detectron's targets and losses,
  backward, SGD with momentum and weight decay at LR 0 so the weights never drift into NaN), at
  2 images per GPU and at the largest batch that fits (doubling from 2 until CUDA runs out of
  memory, up to ``--max_batch``; or the sizes of ``--batch_sizes``), in float32 (TF32 matmuls
  and convolutions) and under bfloat16 autocast (``--amp``); the peak GPU memory of the timed
  steps. The model is configured for each batch size as ``tools/train_net_step.py --bs B``
  configures it (``train_setup.adjust_config_for_batch_size``: IMS_PER_BATCH, the per-batch
  RPN collection size), from random weights (MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False).
  The blob and im_info are on the GPU before timing; the roidb stays on the CPU and the model
  moves what it needs, as in training. One host sync per step (the loss value), as the
  training loop has.
* **inference** ms/image at batch 1 and images/s at batch 8 with ``model.detect`` (eval mode,
  cuDNN autotuning on): the whole test path on the device -- RPN, box head, decoding, class-wise
  NMS, DETECTIONS_PER_IM, then the mask / keypoint heads on the detections; it stops at the
  M x M mask probabilities and keypoint heatmaps (no pasting into the image and no RLE, which
  ``core.test.im_detect_all`` adds on the host). torchvision's timing includes its transform
  (normalisation, a resize by 1.0), mask pasting and keypoint decoding on the GPU.
* **data loader** images/s per worker process (``roi_data.loader`` on the synthetic JPEGs, 2
  images per batch; ``tools/benchmark_loader.py``'s timing).
* unless ``--no-peer``: torchvision's ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` /
  ``keypointrcnn_resnet50_fpn`` (``weights=None, weights_backbone=None``, 81 or 2 classes:
  BatchNorm trained, all layers trainable, as torchvision builds them without weights) on the
  same images (RGB in [0, 1]), boxes, polygon masks rasterised at full size and keypoints, the
  same batch and precision, and the ratio ours / torchvision.

The images are ``--image_size`` (default 800x1333, so the scale is 1.0 and no resize happens),
``--objects`` objects each (random polygons, COCO-like sizes; 17 visible keypoints each for the
keypoint model) drawn on a textured background and saved as JPEGs in a temporary folder.
Timing: ``--warmup`` untimed steps, then ``--iters`` timed ones (fewer when ``--max_seconds``
runs out, never fewer than 3); the median is reported. On CUDA each step is timed by
``torch.cuda.Event`` pairs on the stream, TF32 is on and cuDNN autotuning off for training (with
it on torchvision's mask head re-tunes every step, its shapes changing) and on for inference.
On the CPU (``--device cpu``, or no GPU) the host clock is used and there is no memory figure.
``--profile`` adds, for the first model, torch.profiler's top operators over 3 training steps at
batch 2 and the source lines of one step's host-device synchronisations. A measurement that fails
(out of memory, an error) is recorded as such and the run goes on; ``--json`` is rewritten after
every measurement.
"""
import argparse
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types

import cv2
import numpy as np
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
# PYDETECTRON_LIB times another copy of the package (tools/benchmark_ab.py, before/after runs)
sys.path.insert(0, os.environ.get('PYDETECTRON_LIB') or os.path.join(ROOT, 'lib'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from pydetectron.core.config import (  # noqa: E402
    assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list, reset_cfg)
from pydetectron.datasets import dataset_catalog  # noqa: E402
from pydetectron.datasets.roidb import combined_roidb_for_training  # noqa: E402
from pydetectron.engine import train_setup  # noqa: E402
from pydetectron.modeling.model_builder import Generalized_RCNN  # noqa: E402
from pydetectron.roi_data.loader import build_train_loader  # noqa: E402
from pydetectron.utils.keypoints import get_keypoints  # noqa: E402

# name -> (config, torchvision builder, torchvision num_classes)
MODELS = {
    'mask': ('configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml', 'maskrcnn_resnet50_fpn', 81),
    'faster': ('configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml', 'fasterrcnn_resnet50_fpn',
               81),
    'keypoint': ('configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml',
                 'keypointrcnn_resnet50_fpn', 2),
}
PRECISIONS = ('fp32', 'bf16')
NUM_IMAGE_FILES = 8   # distinct JPEGs; the json repeats them under new image ids


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='mask',
                   help='comma-separated among %s (default: mask)' % ', '.join(MODELS))
    p.add_argument('--amp', action='store_true',
                   help='bfloat16 autocast only (default: float32 and bfloat16)')
    p.add_argument('--fp32', action='store_true', help='float32 (TF32) only')
    p.add_argument('--batch_sizes',
                   help='training batch sizes to time, comma-separated (default: 2, then the '
                   'largest power of two that fits, up to --max_batch)')
    p.add_argument('--max_batch', type=int, default=64, help='upper end of the batch search')
    p.add_argument('--image_size', default='800x1333', help='HEIGHTxWIDTH of the images')
    p.add_argument('--objects', type=int, default=8, help='objects per image')
    p.add_argument('--iters', type=int, default=30, help='timed steps per measurement')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps first')
    p.add_argument('--max_seconds', type=float, default=30.,
                   help='stop timing a measurement after this long (at least 3 steps)')
    p.add_argument('--infer_batch', type=int, default=8, help='the batched inference size')
    p.add_argument('--loader_workers', default='1,4',
                   help='data loader worker counts to time, comma-separated ("" skips)')
    p.add_argument('--loader_iters', type=int, default=60, help='timed loader batches')
    p.add_argument('--parts', default='train,infer,loader',
                   help='what to time, comma-separated among train, infer, loader')
    p.add_argument('--no-peer', dest='peer', action='store_false',
                   help='do not time torchvision')
    p.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    p.add_argument('--set', dest='set_cfgs', nargs='+', default=[],
                   help='config KEY VALUE pairs applied to every model (after the YAML)')
    p.add_argument('--profile', action='store_true',
                   help='after timing the first model: the top operators of 3 of its training '
                   'steps at batch 2 (torch.profiler) and the host-device syncs of one step; '
                   'with --parts infer, for every model: device against wall time per image at '
                   'batch 1, the top operators and the syncs of one image')
    p.add_argument('--channels_last', action='store_true',
                   help='our model in channels-last memory format (torchvision stays NCHW)')
    p.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                   help='torch.compile our conv body (backbone + FPN) in this mode (default, '
                   'reduce-overhead, max-autotune, ...); compilation happens in the warm-up')
    p.add_argument('--json', help='write every number to this file')
    p.add_argument('--keep_data', help='write the synthetic dataset here and keep it')
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(',') if m not in MODELS]
    if unknown or not args.models:
        p.error('--models: unknown %s; choose among %s' % (unknown, ', '.join(MODELS)))
    try:
        h, w = (int(x) for x in args.image_size.lower().split('x'))
    except ValueError:
        p.error('--image_size: expected HEIGHTxWIDTH like 800x1333, got %r' % args.image_size)
    args.height, args.width = h, w
    if args.amp and args.fp32:
        p.error('--amp and --fp32 exclude each other')
    args.precisions = ('bf16',) if args.amp else ('fp32',) if args.fp32 else PRECISIONS
    if args.batch_sizes:
        try:
            args.batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
        except ValueError:
            p.error('--batch_sizes: expected comma-separated integers, got %r' % args.batch_sizes)
        if not args.batch_sizes or min(args.batch_sizes) < 1:
            p.error('--batch_sizes: expected positive integers')
    args.parts = set(x for x in args.parts.split(',') if x)
    if not args.parts <= {'train', 'infer', 'loader'}:
        p.error('--parts: unknown %s' % sorted(args.parts - {'train', 'infer', 'loader'}))
    if len(args.set_cfgs) % 2:
        p.error('--set takes KEY VALUE pairs; got an odd number of items')
    args.loader_workers = [int(x) for x in args.loader_workers.split(',') if x.strip()]
    return args


# ---------------------------------------------------------------------------------------------- #
# Synthetic COCO-like data
# ---------------------------------------------------------------------------------------------- #

def _random_polygon(rng, height, width):
    """A jittered ellipse with a COCO-like size: (2P,) [x0, y0, ...] and its inclusive box."""
    side = math.exp(rng.uniform(math.log(24), math.log(0.6 * min(height, width))))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.)))
    bw = min(width - 2, side * math.sqrt(aspect))
    bh = min(height - 2, side / math.sqrt(aspect))
    cx = rng.uniform(bw / 2 + 1, width - bw / 2 - 1)
    cy = rng.uniform(bh / 2 + 1, height - bh / 2 - 1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 16))
    radius = rng.uniform(0.75, 1.0, 16)
    xs = np.clip(cx + radius * np.cos(angles) * bw / 2, 0, width - 1)
    ys = np.clip(cy + radius * np.sin(angles) * bh / 2, 0, height - 1)
    poly = np.stack([xs, ys], axis=1).reshape(-1)
    return poly, (cx, cy, bw, bh)


def _keypoints_in(rng, center_box, num_keypoints):
    """``num_keypoints`` visible keypoints inside the ellipse: COCO's flat [x, y, v, ...]."""
    cx, cy, bw, bh = center_box
    r = np.sqrt(rng.uniform(0, 0.5, num_keypoints))
    t = rng.uniform(0, 2 * np.pi, num_keypoints)
    xs, ys = cx + r * np.cos(t) * bw / 2, cy + r * np.sin(t) * bh / 2
    return [float(v) for x, y in zip(xs, ys) for v in (round(x), round(y), 2)]


def make_synthetic_coco(out_dir, num_images, height, width, objects, keypoints, seed=0):
    """Write ``NUM_IMAGE_FILES`` JPEGs and a COCO json of ``num_images`` images (the files
    repeated under new ids, each with its own objects); returns the ``coco_json:`` spec."""
    rng = np.random.RandomState(seed)
    img_dir = os.path.join(out_dir, 'images')
    os.makedirs(img_dir, exist_ok=True)
    if keypoints:
        names = get_keypoints()[0]
        categories = [{'id': 1, 'name': 'person', 'supercategory': 'person', 'keypoints': names,
                       'skeleton': []}]
    else:
        categories = [{'id': c, 'name': 'class_%d' % c, 'supercategory': 'thing'}
                      for c in range(1, 81)]
    file_objects = []
    for f in range(NUM_IMAGE_FILES):
        # textured background (low-frequency colour noise) with the objects painted on it
        small = rng.randint(0, 256, (max(2, height // 32), max(2, width // 32), 3), np.uint8)
        im = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        im = cv2.add(im, rng.randint(0, 24, im.shape, np.uint8))
        objs = []
        for _ in range(objects):
            poly, center_box = _random_polygon(rng, height, width)
            color = tuple(int(c) for c in rng.randint(0, 256, 3))
            cv2.fillPoly(im, [np.round(poly.reshape(-1, 2)).astype(np.int32)], color)
            objs.append((poly, center_box))
        cv2.imwrite(os.path.join(img_dir, 'im_%d.jpg' % f), im, [cv2.IMWRITE_JPEG_QUALITY, 90])
        file_objects.append(objs)
    images, annotations = [], []
    for i in range(num_images):
        f = i % NUM_IMAGE_FILES
        images.append({'id': i + 1, 'file_name': 'im_%d.jpg' % f, 'height': height,
                       'width': width})
        for poly, center_box in file_objects[f]:
            xs, ys = poly[0::2], poly[1::2]
            x1, y1 = float(xs.min()), float(ys.min())
            ann = {'id': len(annotations) + 1, 'image_id': i + 1, 'iscrowd': 0,
                   'category_id': 1 if keypoints else int(rng.randint(1, 81)),
                   'segmentation': [[float(v) for v in poly]],
                   'area': float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) -
                                           np.dot(ys, np.roll(xs, 1)))),
                   'bbox': [x1, y1, float(xs.max()) - x1 + 1, float(ys.max()) - y1 + 1]}
            if keypoints:
                ann['keypoints'] = _keypoints_in(rng, center_box, len(categories[0]['keypoints']))
                ann['num_keypoints'] = len(categories[0]['keypoints'])
            annotations.append(ann)
    ann_file = os.path.join(out_dir, 'synthetic.json')
    with open(ann_file, 'w') as fh:
        json.dump({'images': images, 'annotations': annotations, 'categories': categories}, fh)
    return 'coco_json:%s:%s' % (ann_file, img_dir)


# ---------------------------------------------------------------------------------------------- #
# Our model, configured as tools/train_net_step.py configures it
# ---------------------------------------------------------------------------------------------- #

def configure(model_name, dataset_spec, batch_size, args):
    """The global cfg for ``model_name`` trained at ``batch_size`` images on one GPU."""
    reset_cfg()
    merge_cfg_from_file(os.path.join(ROOT, MODELS[model_name][0]))
    size, max_size = min(args.height, args.width), max(args.height, args.width)
    merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False,
                         'TRAIN.SCALES', (size,), 'TRAIN.MAX_SIZE', max_size,
                         'TEST.SCALE', size, 'TEST.MAX_SIZE', max_size,
                         'TRAIN.USE_FLIPPED', False])
    if args.set_cfgs:
        merge_cfg_from_list(args.set_cfgs)
    names, num_classes = dataset_catalog.resolve_dataset_arg(dataset_spec, training=True)
    cfg.TRAIN.DATASETS, cfg.MODEL.NUM_CLASSES = tuple(names), num_classes
    train_setup.adjust_config_for_batch_size(cfg, batch_size, 1, 1, num_workers=0,
                                             write=lambda *a, **k: None)
    cfg.CUDA = args.device.type == 'cuda'
    assert_and_infer_cfg()
    return names


def load_batch(names, batch_size, device):
    """One loader batch of ``batch_size`` images: (data, im_info) on ``device``, the roidb list
    on the CPU, and the per-image ground truth for torchvision."""
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
    loader = build_train_loader(roidb, ratio_list, ratio_index, batch_size, 1, 0, seed=0)
    batch = next(iter(loader))
    return (batch['data'][0].to(device), batch['im_info'][0].to(device), batch['roidb'][0])


def build_ours(device, channels_last=False, compile_body=None):
    """Our model from the cfg, with the tools' --channels_last / --compile applied."""
    from pydetectron.core.test_engine import apply_speed_options
    torch.manual_seed(0)
    return apply_speed_options(Generalized_RCNN().to(device), channels_last, compile_body)


# ---------------------------------------------------------------------------------------------- #
# torchvision, on the same images and ground truth
# ---------------------------------------------------------------------------------------------- #

def build_peer(model_name, device):
    from torchvision.models import detection
    builder = getattr(detection, MODELS[model_name][1])
    torch.manual_seed(0)
    return builder(weights=None, weights_backbone=None,
                   num_classes=MODELS[model_name][2]).to(device)


def peer_inputs(data, im_info, gt, model_name):
    """torchvision's inputs from our blob: RGB images in [0, 1] cut to their size, targets with
    exclusive box corners, full-size masks and (x, y, v) keypoints, all on the blob's device."""
    import pycocotools.mask as mask_util
    means = torch.tensor(cfg.PIXEL_MEANS, dtype=torch.float32, device=data.device).view(3, 1, 1)
    images, targets = [], []
    for i, entry in enumerate(gt):
        h, w = int(im_info[i, 0]), int(im_info[i, 1])
        images.append(((data[i, :, :h, :w] + means).flip(0) / 255.).contiguous())
        g = entry['gt_boxes'].shape[0]
        boxes = entry['gt_boxes'].clone()
        boxes[:, 2:] += 1  # Detectron's inclusive x2, y2 -> torchvision's exclusive ones
        t = {'boxes': boxes.to(data.device),
             'labels': entry['gt_classes'][:g].to(data.device)}
        if model_name == 'mask':
            rles = [mask_util.merge(mask_util.frPyObjects([p.tolist() for p in segm], h, w))
                    for segm in entry['segms'][:g]]
            t['masks'] = torch.from_numpy(
                mask_util.decode(rles).transpose(2, 0, 1).copy()).to(data.device)
        if model_name == 'keypoint':
            t['keypoints'] = entry['gt_keypoints'][:g].transpose(1, 2).contiguous().to(
                data.device)
        targets.append(t)
    return images, targets


# ---------------------------------------------------------------------------------------------- #
# Timing
# ---------------------------------------------------------------------------------------------- #

def _is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or 'out of memory' in str(e)


def _free(device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def timed_ms(step, device):
    """Milliseconds of one ``step()``: device events on the stream on CUDA, the host clock
    elsewhere."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    return 1000. * (time.perf_counter() - t0)


def time_steps(step, device, args):
    """Median seconds of ``step()`` after the warm-up; (median, p10, p90, steps timed)."""
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, begin = [], time.perf_counter()
    min_iters = min(3, args.iters)
    while len(times) < args.iters and (len(times) < min_iters or
                                       time.perf_counter() - begin < args.max_seconds):
        times.append(timed_ms(step, device) / 1000.)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return statistics.median(times), q(0.1), q(0.9), len(times)


def _autocast(device, precision):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=precision == 'bf16')


def train_step_parts(model, impl, inputs, device, precision):
    """One optimizer step of ``model`` on ``inputs`` in four parts, called in this order:
    ``forward()`` -> total loss, ``backward(total)``, ``optimizer_step()``, ``read(total)`` (the
    host reading the loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # LR 0: the same kernels as training, and the random weights never drift into NaN
    optimizer = torch.optim.SGD(params, lr=0., momentum=0.9, weight_decay=1e-4)
    model.train()

    def forward():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            if impl == 'ours':
                losses = model(*inputs)['losses']
            else:
                losses = model(*inputs)
        return sum(v.float().reshape(()) for v in losses.values())
    return forward, lambda total: total.backward(), optimizer.step, lambda total: total.item()


def train_step_fn(model, impl, inputs, device, precision):
    """One optimizer step of ``model`` on ``inputs``, ending with the host reading the loss."""
    forward, backward, optimizer_step, read = train_step_parts(model, impl, inputs, device,
                                                               precision)

    def step():
        total = forward()
        backward(total)
        optimizer_step()
        return read(total)
    return step


def _time_training(model_name, impl, dataset_spec, batch_size, precision, args):
    device = args.device
    names = configure(model_name, dataset_spec, batch_size, args)
    data, im_info, gt = load_batch(names, batch_size, device)
    if impl == 'ours':
        model = build_ours(device, args.channels_last, args.compile)
        inputs = (data, im_info, gt)
    else:
        model = build_peer(model_name, device)
        inputs = peer_inputs(data, im_info, gt, model_name)
        del data
    step = train_step_fn(model, impl, inputs, device, precision)
    med, p10, p90, n = time_steps(step, device, args)
    out = dict(status='ok', step_ms=1000 * med, step_ms_p10=1000 * p10, step_ms_p90=1000 * p90,
               iters=n, images_per_s=batch_size / med)
    if device.type == 'cuda':
        out['peak_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def measure_training(model_name, impl, dataset_spec, batch_size, precision, args):
    """A result dict for one (implementation, batch, precision); status 'oom' when it did not
    fit. (The work runs in a function of its own, so that after an out-of-memory error nothing
    of it stays referenced and its memory can be released.)"""
    rec = {'part': 'train', 'model': model_name, 'impl': impl, 'precision': precision,
           'batch': batch_size}
    torch.backends.cudnn.benchmark = False
    try:
        rec.update(_time_training(model_name, impl, dataset_spec, batch_size, precision, args))
    except Exception as e:  # noqa: BLE001 -- one failing measurement must not end the run
        if _is_oom(e):
            rec['status'] = 'oom'
        else:
            rec['status'] = 'error'
            rec['error'] = '%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else '')
            logging.getLogger(__name__).error('train %s %s %s batch %d failed', model_name, impl,
                                              precision, batch_size, exc_info=True)
    _free(args.device)
    return rec


def _print_training(rec):
    if rec['status'] == 'ok':
        what = '%.1f images/s (%.0f ms/step, %d steps)%s' % (
            rec['images_per_s'], rec['step_ms'], rec['iters'],
            ', peak %.2f GiB' % rec['peak_mem_gib'] if 'peak_mem_gib' in rec else '')
    else:
        what = rec['status'] + (' (%s)' % rec['error'] if 'error' in rec else '')
    print('  train %s %s %s batch %d: %s' % (rec['model'], rec['impl'], rec['precision'],
                                             rec['batch'], what), flush=True)


def inference_runner(model_name, impl, data, im_info, gt, args):
    """(model in eval mode, ``run(lo, hi)``): the detections per image of images lo..hi-1 --
    ``model.detect`` for ours, torchvision's forward on its own inputs for the peer. Call under
    ``torch.no_grad()``."""
    device = args.device
    if impl == 'ours':
        model = build_ours(device, args.channels_last, args.compile).eval()

        def run(lo, hi):
            return [r['boxes'].shape[0] for r in model.detect(data[lo:hi], im_info[lo:hi])]
    else:
        model = build_peer(model_name, device).eval()
        images, _ = peer_inputs(data, im_info, gt, model_name)

        def run(lo, hi):
            return [r['boxes'].shape[0] for r in model(images[lo:hi])]
    return model, run


def measure_inference(model_name, impl, dataset_spec, args):
    """ms/image at batch 1 (over distinct images) and images/s at ``--infer_batch``."""
    device = args.device
    torch.backends.cudnn.benchmark = True
    nb = args.infer_batch
    names = configure(model_name, dataset_spec, max(nb, 2), args)
    data, im_info, gt = load_batch(names, max(nb, 2), device)
    model, run = inference_runner(model_name, impl, data, im_info, gt, args)
    rec = {'part': 'infer', 'model': model_name, 'impl': impl, 'precision': 'fp32',
           'status': 'ok'}
    with torch.no_grad():
        counter = {'i': 0, 'dets': []}

        def one():
            i = counter['i'] % nb
            counter['i'] += 1
            counter['dets'].extend(run(i, i + 1))
        med, _, _, n = time_steps(one, device, args)
        rec.update(batch1_ms=1000 * med, batch1_iters=n)
        rec['detections_per_image'] = float(np.mean(counter['dets']))
        med, _, _, n = time_steps(lambda: run(0, nb), device, args)
        rec.update(batch=nb, batchN_images_per_s=nb / med, batchN_iters=n)
    del model
    _free(device)
    torch.backends.cudnn.benchmark = False
    return rec


def batch_sizes_to_time(model_name, dataset_spec, precision, args):
    """2 and the largest power of two that fits (one step of ours per size tried), or
    ``--batch_sizes``."""
    if args.batch_sizes:
        return list(args.batch_sizes)
    sizes, fits, bs = [2], 2, 4
    # one step tells whether a batch fits (the timed run falls back if a later step does not)
    probe = types.SimpleNamespace(**dict(vars(args), warmup=0, iters=1, max_seconds=0.))
    while bs <= args.max_batch:
        rec = measure_training(model_name, 'ours', dataset_spec, bs, precision, probe)
        print('  search %s %s batch %d: %s' % (model_name, precision, bs, rec['status']),
              flush=True)
        if rec['status'] != 'ok':
            break
        fits, bs = bs, bs * 2
    if fits != 2:
        sizes.append(fits)
    return sizes


def measure_loader(dataset_spec, model_name, args):
    """images/s of the training loader for each worker count (benchmark_loader's timing)."""
    from benchmark_loader import time_loader
    names = configure(model_name, dataset_spec, 2, args)
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
    out = []
    for w in args.loader_workers:
        ns = types.SimpleNamespace(batch_size=2, num_gpus=1, warmup=4, iters=args.loader_iters)
        rate, per_cpu, _ = time_loader(roidb, ratio_list, ratio_index, ns, w)
        out.append({'part': 'loader', 'workers': w, 'images_per_s': rate,
                    'images_per_s_per_worker': rate / max(w, 1),
                    'images_per_worker_cpu_s': per_cpu})
    return out


def profile_training(model_name, dataset_spec, args):
    """Print the top operators of 3 steps of ours at batch 2 and count one step's syncs."""
    device = args.device
    names = configure(model_name, dataset_spec, 2, args)
    data, im_info, gt = load_batch(names, 2, device)
    model = build_ours(device, args.channels_last, args.compile)
    step = train_step_fn(model, 'ours', (data, im_info, gt), device, 'fp32')
    for _ in range(2):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = 'self_cpu_time_total'
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = 'self_cuda_time_total'
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    # GPU busy time: the kernels' and copies' own events (operators' "self" device time would
    # count their kernels a second time)
    kernel_us = sum(getattr(e, 'self_device_time_total', 0) or 0 for e in events
                    if str(getattr(e, 'device_type', '')).endswith('CUDA'))
    print('\n-- %s training, batch 2, fp32: top operators of 3 steps (device time per step: '
          '%.1f ms)' % (model_name, kernel_us / 3000.))
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    rows, step_ms = host_breakdown(model, train_step_parts(model, 'ours', (data, im_info, gt),
                                                           device, 'fp32'))
    print('-- host time by stage, %s training, batch 2, fp32 (mean of 20 steps, host clock; '
          'a stage that reads a device value waits inside its own time): %.1f ms per step'
          % (model_name, step_ms))
    for name, ms in rows:
        print('   %-28s %7.2f ms  %5.1f%%' % (name, ms, 100. * ms / step_ms))
    if device.type == 'cuda':
        count, where = _sync_sites(step)
        print('-- host-device synchronisations in one training step: %d' % count)
        for key, n in sorted(where.items(), key=lambda kv: -kv[1])[:20]:
            print('   %4d  %s' % (n, key))
    del model
    _free(device)


def host_breakdown(model, step_parts, steps=20):
    """Host time by stage of our training step: (stage, ms per step) pairs, measured by wrapping
    the stages' functions and modules with host clocks (no synchronisation added: a stage that
    reads a device value waits for the device inside its own time). ``step_parts`` is
    ``(forward, backward, optimizer_step, read_loss)``, called in that order each step."""
    import pydetectron.modeling.losses as L
    import pydetectron.modeling.targets as T
    acc = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.) + time.perf_counter() - t0
        return wrapper

    patches = []   # (object, attribute, original, was an instance attribute)

    def patch(obj, attr, name):
        if obj is None or not hasattr(obj, attr):
            return
        own = attr in vars(obj)
        orig = getattr(obj, attr)
        patches.append((obj, attr, orig, own))
        setattr(obj, attr, timed(name, orig))

    for mod_name, stage in (('Conv_Body', 'body (backbone + FPN)'), ('RPN', 'RPN head'),
                            ('Box_Head', 'box head'), ('Box_Outs', 'box head'),
                            ('Mask_Head', 'mask head'), ('Mask_Outs', 'mask head'),
                            ('Keypoint_Head', 'keypoint head'), ('Keypoint_Outs', 'keypoint head')):
        patch(getattr(model, mod_name, None), 'forward', stage)
    patch(getattr(model, 'RPN', None), 'add_proposals', 'proposals')
    for attr, stage in (('pack_gt', 'ground truth packing'), ('pack_polygons', 'ground truth packing'),
                        ('rpn_anchor_targets_flat', 'RPN targets'),
                        ('label_proposals', 'Fast R-CNN labels'), ('sample_rois', 'RoI sampling'),
                        ('mask_rcnn_targets', 'mask targets'),
                        ('keypoint_rcnn_targets', 'keypoint targets')):
        patch(T, attr, stage)
    for attr, stage in (('rpn_losses_flat', 'RPN losses'), ('fast_rcnn_losses', 'R-CNN losses'),
                        ('mask_rcnn_losses', 'R-CNN losses'), ('keypoint_losses', 'R-CNN losses')):
        patch(L, attr, stage)
    forward, backward, opt_step, read = step_parts
    total = {'step': 0., 'forward': 0., 'backward': 0., 'optimizer': 0., 'loss read (sync)': 0.}
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = forward()
            t1 = time.perf_counter()
            backward(loss)
            t2 = time.perf_counter()
            opt_step()
            t3 = time.perf_counter()
            read(loss)
            t4 = time.perf_counter()
            for k, v in (('step', t4 - t0), ('forward', t1 - t0), ('backward', t2 - t1),
                         ('optimizer', t3 - t2), ('loss read (sync)', t4 - t3)):
                total[k] += v
    finally:
        for obj, attr, orig, own in reversed(patches):
            if own:
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)
    rows = [(k, 1000. * v / steps) for k, v in acc.items()]
    rows.append(('forward, the rest', 1000. * (total['forward'] - sum(acc.values())) / steps))
    rows += [(k, 1000. * total[k] / steps) for k in ('backward', 'optimizer', 'loss read (sync)')]
    return rows, 1000. * total['step'] / steps


def _sync_sites(fn):
    """Run ``fn()`` once on CUDA, counting its host-device synchronisations by source line."""
    import warnings
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    where = {}
    for w in caught:
        key = '%s:%d' % (os.path.relpath(w.filename, ROOT), w.lineno)
        where[key] = where.get(key, 0) + 1
    return len(caught), where


def profile_inference(model_name, dataset_spec, args):
    """Print, for ours at batch 1: the device time per image against the wall time (host-bound
    when the device idles), the top operators by host time, and the syncs of one image."""
    device = args.device
    torch.backends.cudnn.benchmark = True
    names = configure(model_name, dataset_spec, 2, args)
    data, im_info, _ = load_batch(names, 2, device)
    model = build_ours(device, args.channels_last, args.compile).eval()
    n = 10
    with torch.no_grad():
        for _ in range(3):
            model.detect(data[:1], im_info[:1])
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == 'cuda':
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            for i in range(n):
                model.detect(data[i % 2:i % 2 + 1], im_info[i % 2:i % 2 + 1])
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
        wall_ms = 1000. * (time.perf_counter() - t0) / n
        events = prof.key_averages()
        kernel_us = sum(getattr(e, 'self_device_time_total', 0) or 0 for e in events
                        if str(getattr(e, 'device_type', '')).endswith('CUDA'))
        print('\n-- %s inference, batch 1: device time %.1f ms per image, wall %.1f ms per image '
              '(under the profiler)' % (model_name, kernel_us / 1000. / n, wall_ms))
        print(events.table(sort_by='self_cpu_time_total', row_limit=15,
                           max_name_column_width=60))
        if device.type == 'cuda':
            detect_one = model.detect
            count, where = _sync_sites(lambda: detect_one(data[:1], im_info[:1]))
            print('-- host-device synchronisations in one image: %d' % count)
            for key, k in sorted(where.items(), key=lambda kv: -kv[1])[:20]:
                print('   %4d  %s' % (k, key))
    del model
    torch.backends.cudnn.benchmark = False
    _free(device)


# ---------------------------------------------------------------------------------------------- #
# Report
# ---------------------------------------------------------------------------------------------- #

def _fmt(v, spec='%.1f'):
    return '—' if v is None else spec % v


def print_tables(results, peer):
    train = [r for r in results if r['part'] == 'train']
    print('\n== training (images/s; peak GPU memory in GiB)')
    print('%-9s %-5s %5s %10s %10s %7s %9s %9s' % (
        'model', 'prec', 'batch', 'ours', 'torchvis' if peer else '', 'ratio' if peer else '',
        'mem ours', 'mem tv' if peer else ''))
    keys = sorted({(r['model'], r['precision'], r['batch']) for r in train},
                  key=lambda k: (k[0], PRECISIONS.index(k[1]), k[2]))
    for m, prec, b in keys:
        row = {r['impl']: r for r in train if (r['model'], r['precision'], r['batch']) == (m, prec, b)}
        ours, tv = row.get('ours', {}), row.get('torchvision', {})
        o, t = ours.get('images_per_s'), tv.get('images_per_s')
        ratio = o / t if o and t else None
        print('%-9s %-5s %5d %10s %10s %7s %9s %9s' % (
            m, prec, b, _fmt(o) if ours.get('status') == 'ok' else ours.get('status', ''),
            (_fmt(t) if tv.get('status') == 'ok' else tv.get('status', '')) if peer else '',
            _fmt(ratio, '%.2fx') if peer else '', _fmt(ours.get('peak_mem_gib'), '%.2f'),
            _fmt(tv.get('peak_mem_gib'), '%.2f') if peer else ''))
    infer = [r for r in results if r['part'] == 'infer']
    if infer:
        print('\n== inference, fp32 (TF32): ms/image at batch 1, images/s at batch N, '
              'detections/image')
        print('%-9s %-12s %10s %6s %12s %10s' % ('model', 'impl', 'ms @1', 'N', 'img/s @N',
                                                 'dets/img'))
        for r in infer:
            if r['status'] != 'ok':
                print('%-9s %-12s %s' % (r['model'], r['impl'], r['status']))
                continue
            print('%-9s %-12s %10.1f %6d %12.1f %10.1f' % (
                r['model'], r['impl'], r['batch1_ms'], r['batch'], r['batchN_images_per_s'],
                r['detections_per_image']))
        for m in sorted({r['model'] for r in infer}):
            o = [r for r in infer if r['model'] == m and r['impl'] == 'ours' and
                 r['status'] == 'ok']
            t = [r for r in infer if r['model'] == m and r['impl'] == 'torchvision' and
                 r['status'] == 'ok']
            if o and t:
                print('%-9s ratio ours/torchvision: batch 1 speed %.2fx, batch %d %.2fx' % (
                    m, t[0]['batch1_ms'] / o[0]['batch1_ms'], o[0]['batch'],
                    o[0]['batchN_images_per_s'] / t[0]['batchN_images_per_s']))
    loader = [r for r in results if r['part'] == 'loader']
    if loader:
        print('\n== data loader (synthetic JPEGs, 2 images per batch)')
        print('%8s %10s %12s %18s' % ('workers', 'images/s', 'per worker', 'per worker-CPU-s'))
        for r in loader:
            print('%8d %10.1f %12.1f %18.1f' % (r['workers'], r['images_per_s'],
                                               r['images_per_s_per_worker'],
                                               r['images_per_worker_cpu_s']))


def machine_info(device):
    info = {'date': datetime.date.today().isoformat(), 'host': platform.node(),
            'platform': platform.platform(), 'python': platform.python_version(),
            'torch': torch.__version__, 'cpus': os.cpu_count(), 'device': str(device)}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    try:
        import torchvision
        info['torchvision'] = torchvision.__version__
    except ImportError:
        pass
    return info


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.peer:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            sys.exit('benchmark.py: torchvision is not importable; install it or pass --no-peer')
    info = machine_info(args.device)
    print('pydetectron benchmark: %s' % ', '.join('%s %s' % kv for kv in info.items()))
    print('images %dx%d, %d objects each; warm-up %d, up to %d timed steps (%.0f s) per number'
          % (args.height, args.width, args.objects, args.warmup, args.iters, args.max_seconds),
          flush=True)
    impls = ['ours'] + (['torchvision'] if args.peer else [])
    data_root = args.keep_data or tempfile.mkdtemp(prefix='pydetectron_bench_')
    results = _Results(args, info)
    try:
        num_images = max(16, args.max_batch, max(args.batch_sizes or [0]), args.infer_batch)
        specs = {}
        for k, model_name in enumerate(args.models.split(',')):
            kp = model_name == 'keypoint'
            if kp not in specs:
                specs[kp] = make_synthetic_coco(os.path.join(data_root, 'kp' if kp else 'det'),
                                                num_images, args.height, args.width,
                                                args.objects, kp)
            spec = specs[kp]
            if k == 0 and 'loader' in args.parts and args.loader_workers:
                for rec in measure_loader(spec, model_name, args):
                    results.append(rec)
                    print('  loader, %d workers: %.1f images/s' % (rec['workers'],
                                                                   rec['images_per_s']),
                          flush=True)
            if 'train' in args.parts:
                for precision in args.precisions:
                    sizes = batch_sizes_to_time(model_name, spec, precision, args)
                    while sizes:
                        bs = sizes.pop(0)
                        for impl in impls:
                            rec = measure_training(model_name, impl, spec, bs, precision, args)
                            results.append(rec)
                            _print_training(rec)
                            if (impl == 'ours' and rec['status'] == 'oom' and not sizes
                                    and not args.batch_sizes and bs // 2 > 2):
                                sizes.append(bs // 2)  # fitted in the search, not in timing
                            if impl == 'ours' and rec['status'] != 'ok':
                                break
            if 'infer' in args.parts:
                for impl in impls:
                    try:
                        rec = measure_inference(model_name, impl, spec, args)
                        print('  infer %s %s: %.1f ms/image at batch 1, %.1f images/s at batch '
                              '%d' % (model_name, impl, rec['batch1_ms'],
                                      rec['batchN_images_per_s'], rec['batch']), flush=True)
                    except Exception as e:  # noqa: BLE001 -- report it, time the rest
                        logging.getLogger(__name__).error('infer %s %s failed', model_name, impl,
                                                          exc_info=True)
                        rec = {'part': 'infer', 'model': model_name, 'impl': impl,
                               'status': 'oom' if _is_oom(e) else 'error',
                               'error': '%s: %s' % (type(e).__name__, e)}
                        _free(args.device)
                    results.append(rec)
            if args.profile and k == 0 and 'train' in args.parts:
                profile_training(model_name, spec, args)
            if args.profile and 'infer' in args.parts:
                profile_inference(model_name, spec, args)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_root, ignore_errors=True)
    print_tables(results, args.peer)
    if args.json:
        print('\nwrote %s' % args.json)
    return list(results)


class _Results(list):
    """The result records; with ``--json``, the file is rewritten after each one, so a run
    stopped by a time limit keeps what it measured."""

    def __init__(self, args, info):
        super().__init__()
        self.path = args.json
        self.head = {'machine': info, 'args': {
            k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, torch.device) else v
            for k, v in vars(args).items()}}

    def append(self, rec):
        super().append(rec)
        if self.path:
            # NaN (an unmeasurable CPU time) is not JSON: null
            finite = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in r.items()} for r in self]
            with open(self.path + '.tmp', 'w') as f:
                json.dump(dict(self.head, results=finite), f, indent=1)
            os.replace(self.path + '.tmp', self.path)


if __name__ == '__main__':
    main()
