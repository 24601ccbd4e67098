#!/usr/bin/env python
"""How often ``--compile`` compiles the conv body over real training steps (issue 19, item 3).

Training steps as ``tools/train_net_step.py --compile MODE`` runs them: the training loader on a
COCO-format dataset of real photos (default: coco_mini train2017) at TRAIN.SCALES (--scale,) /
MAX_SIZE --max-size, Detectron's Mask R-CNN R-50-FPN config with a frozen-BN body from random
weights (its AffineChannel layers started from the first batch's statistics, as
``--allow_random_frozen_bn`` does), the body compiled with the tools' options
(``engine.compile_shapes.compile_options``; SHAPE_BUCKETS set as the tools set it), forward,
backward and an SGD step each. It prints one JSON line: the number of graphs dynamo compiled
(``torch._dynamo.utils.counters``), its recompilations and their first reasons, the distinct blob
shapes the body saw and those Detectron's stride padding alone would give, the extra pixels of
the bucket padding, and the step times (the first step, the median of the second half).

``--compile off`` runs the same steps uncompiled (the step time to compare with);
``--one-batch`` trains every step on the first batch, one blob shape (the step time of
fixed-size images, to compare the real shapes' with); ``--one-batch HxW`` on the first batch
whose blob is H x W (the commonest real shape, for steps of equal pixels). The record has each
run's median step time and its median per megapixel of blob.
``--automatic`` compiles as the tools did before this change (no ``dynamic=True``: torch's
automatic dynamic shapes) for comparison. ``--backend eager`` or ``aot_eager`` traces with dynamo
but skips Inductor's code generation (fast on a CPU; dynamo's guards and recompilations are the
same); ``--backend inductor`` (default) is the real thing.

    python dev/count_recompiles.py --steps 200 --json recompiles.json                 # GPU
    python dev/count_recompiles.py --device cpu --backend aot_eager --steps 12 --scale 320 \\
        --max-size 533 --nw 1                                                          # CPU
    python dev/count_recompiles.py --shapes-only --compile reduce-overhead --steps 200  # shapes
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT  # noqa: E402  (puts pydetectron on sys.path)

import torch  # noqa: E402

CONFIG = os.path.join('configs', 'baselines', 'e2e_mask_rcnn_R-50-FPN_1x.yaml')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='a coco_mini-like folder (annotations/, images/)')
    p.add_argument('--cfg', default=CONFIG)
    p.add_argument('--set', dest='set_cfgs', nargs='*', default=[], help='more KEY VALUE pairs')
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--bs', type=int, default=2, help='images per step')
    p.add_argument('--nw', type=int, default=4, help='DataLoader workers')
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--compile', default='default', metavar='MODE',
                   help="the tools' --compile MODE, or 'off' (no compilation: the baseline of "
                   'the step time)')
    p.add_argument('--shape_buckets', type=int, default=None, metavar='N',
                   help="as the tools' flag (default: the mode's)")
    p.add_argument('--automatic', action='store_true',
                   help="compile without dynamic=True (the tools' options before issue 19)")
    p.add_argument('--backend', default='inductor', help='torch.compile backend')
    p.add_argument('--lr', type=float, default=0.0025 / 3)
    p.add_argument('--shapes-only', action='store_true',
                   help='only the blob shapes of --steps loader batches (no model)')
    p.add_argument('--one-batch', nargs='?', const='first', default=None, metavar='HxW',
                   type=one_batch_shape,
                   help='every step on one batch: one blob shape, the fixed-size reference '
                        'for the step times of the real, varied shapes; the first batch, or '
                        'with HxW the first whose blob is H x W (e.g. 800x1216, the most '
                        'common at 800 / 1333: the same pixels as the real steps of that shape)')
    p.add_argument('--device', default='cuda')
    p.add_argument('--json', default=None)
    return p.parse_args(argv)


def one_batch_shape(text):
    """--one-batch's value: 'first', or a blob shape HxW -> (H, W)."""
    if text == 'first':
        return text
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError('expected HxW (e.g. 800x1216), got %r' % text)
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError('expected a positive H x W, got %r' % text)
    return h, w


def first_batch_of_shape(batches, shape, limit=1000):
    """The first of ``batches`` whose blob is ``shape`` (H, W); SystemExit after ``limit``."""
    for _, batch in zip(range(limit), batches):
        if tuple(batch['data'][0].shape[-2:]) == shape:
            return batch
    raise SystemExit('count_recompiles.py: --one-batch %dx%d: no batch of that blob shape in %d '
                     'batches' % (shape + (limit,)))


def default_data():
    data = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini'))
    if not os.path.isdir(data):
        data = os.path.join(ROOT, '.gpu_data', 'coco_mini')
    return data


def configure(args):
    """The global cfg as train_net_step.py sets it for ``--bs`` on one device; the dataset
    names."""
    from pydetectron.core.config import reset_cfg
    from pydetectron.engine import config_sequence, train_setup
    from pydetectron.engine.compile_shapes import set_shape_buckets
    reset_cfg()
    spec = 'coco_json:%s:%s' % (os.path.join(args.data, 'annotations', 'instances_train2017.json'),
                                os.path.join(args.data, 'images', 'train2017'))

    def after_merge(c):
        train_setup.adjust_config_for_batch_size(c, args.bs, 1, 1, num_workers=args.nw,
                                                 write=lambda *a, **k: None)
        set_shape_buckets(c, argparse.Namespace(
            compile=None if args.compile == 'off' else args.compile,
            shape_buckets=args.shape_buckets))

    return config_sequence.configure(
        os.path.join(ROOT, args.cfg), args.set_cfgs,
        overrides=['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'TRAIN.WEIGHTS', '',
                   'TRAIN.SCALES', (args.scale,), 'TRAIN.MAX_SIZE', args.max_size],
        after_merge=after_merge, dataset=spec, split='train', cuda=args.device == 'cuda')


class RecompileLog(logging.Handler):
    """Collects dynamo's "Recompiling function" records (the recompiles log artifact)."""

    def __init__(self):
        super().__init__()
        self.reasons = []

    def emit(self, record):
        msg = record.getMessage()
        if 'Recompiling function' in msg:
            self.reasons.append(' '.join(msg.split()))


def compile_body(model, args):
    from pydetectron.engine.compile_shapes import compile_options
    if args.compile == 'off':
        return None
    options = compile_options(args.compile)
    if args.automatic:
        options.pop('dynamic', None)
    if args.backend != 'inductor':
        options.pop('mode', None)    # modes and options are Inductor's
        options.pop('options', None)
    model.Conv_Body.compile(backend=args.backend, **options)
    return options


def _cycle(loader):
    while True:
        yield from loader


def main(argv=None):
    args = parse_args(argv)
    args.data = args.data or default_data()
    from torch._dynamo.utils import counters
    from pydetectron.core.config import cfg
    from pydetectron.datasets.roidb import combined_roidb_for_training
    from pydetectron.modeling.model_builder import Generalized_RCNN
    from pydetectron.nn.affine import init_affine_channels_from_data
    from pydetectron.nn.data_parallel import DataParallel
    from pydetectron.roi_data.loader import build_train_loader
    from pydetectron.utils import blob as blob_utils
    from pydetectron.utils.blob import padded_size

    names = configure(args)
    device = torch.device(args.device)
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
    loader = build_train_loader(roidb, ratio_list, ratio_index, args.bs, 1, args.nw, seed=0)
    if isinstance(args.one_batch, tuple):
        batches = _cycle(loader)
        first = first_batch_of_shape(batches, args.one_batch)
    else:
        batches = iter(loader)
        first = next(batches)
    options = model = None
    if not args.shapes_only:
        torch.manual_seed(0)
        model = Generalized_RCNN().to(device)
        init_affine_channels_from_data(model.Conv_Body, first['data'][0].to(device))
        options = compile_body(model, args)
        model = DataParallel(model, device_ids=[device.index or 0] if device.type == 'cuda'
                             else [], cpu_keywords=['roidb'])
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)

    log = RecompileLog()
    torch._logging.set_logs(recompiles=True)
    logging.getLogger('torch._dynamo').addHandler(log)
    counters.clear()
    stride = blob_utils.coarsest_stride(cfg)
    shapes, stride_shapes, pixels, stride_pixels, times, nonfinite = {}, {}, 0, 0, [], 0
    megapixels = []
    batch = first
    for step in range(args.steps):
        if step and not args.one_batch:
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
        data, im_info = batch['data'][0], batch['im_info'][0]
        h, w = tuple(data.shape[-2:])
        sh, sw = padded_size(float(im_info[:, 0].max()), float(im_info[:, 1].max()), stride)
        shapes[(h, w)] = shapes.get((h, w), 0) + 1
        stride_shapes[(sh, sw)] = stride_shapes.get((sh, sw), 0) + 1
        pixels += h * w
        stride_pixels += sh * sw
        megapixels.append(data.shape[0] * h * w / 1e6)
        if model is None:
            continue
        t = time.perf_counter()
        out = model(**batch)
        loss = sum(v.float().reshape(()) for v in out['losses'].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(loss):
            optimizer.step()
        else:
            nonfinite += 1
        float(loss.detach())             # the step is over when the host has the loss
        times.append(time.perf_counter() - t)
    del batches
    result = {
        'device': torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu',
        'torch': torch.__version__, 'steps': args.steps, 'bs': args.bs,
        'one_batch': ('%dx%d' % args.one_batch if isinstance(args.one_batch, tuple)
                      else args.one_batch is not None),
        'scale': args.scale, 'max_size': args.max_size, 'compile': args.compile,
        'backend': args.backend, 'compile_options': options, 'automatic': args.automatic,
        'shape_buckets': int(cfg.SHAPE_BUCKETS),
        'graphs_compiled': int(counters['stats']['unique_graphs']),
        'frames_compiled': int(counters['frames']['ok']),
        'recompiles': len(log.reasons),
        'recompile_reasons': log.reasons[:5],
        'distinct_blob_shapes': len(shapes),
        'distinct_stride_shapes': len(stride_shapes),
        'extra_pixels_pct': round(100.0 * (pixels / float(stride_pixels) - 1), 2),
        'blob_shapes': sorted('%dx%d:%d' % (k[0], k[1], v) for k, v in shapes.items()),
        'first_step_s': round(times[0], 3) if times else None,
        'median_step_s_second_half':
            round(statistics.median(times[len(times) // 2:]), 4) if times else None,
        # a step's time over its blob's pixels (all images): real shapes against one shape of
        # other pixels
        'median_ms_per_megapixel_second_half':
            round(statistics.median(1e3 * t / mp for t, mp in zip(
                times[len(times) // 2:], megapixels[len(times) // 2:])), 3) if times else None,
        'nonfinite_losses': nonfinite,
    }
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
