"""Measure the training data loader's throughput (images per second).

    python dev/benchmark_loader.py                        # coco_mini, 800/1333, FPN padding
    python dev/benchmark_loader.py --dataset coco2017 --workers 0,4,8 --iters 200
    python dev/benchmark_loader.py --cfg configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml

Builds the training roidb (flipped copies, filtering, targets) and the loader exactly as training
does, then times ``--iters`` batches after ``--warmup`` ones, for each worker count of
``--workers``. ``0`` workers means the batches are made in this process. With W workers
"images/s" is the whole loader's (the main process only receives batches here) and "per worker"
divides it by W. "per worker-CPU-s" divides the images by the CPU time the batch-making processes
used: what one worker process delivers per second of a core, whatever else the machine runs.
"""
import argparse
import datetime
import logging
import os
import platform
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

from bench.loader import time_loader  # noqa: E402  (puts pydetectron on sys.path)
from pydetectron.core.config import cfg, merge_cfg_from_file, merge_cfg_from_list  # noqa: E402
from pydetectron.datasets import dataset_catalog  # noqa: E402
from pydetectron.datasets.roidb import combined_roidb_for_training  # noqa: E402

DEFAULT_DATASET = os.path.normpath(os.path.join(
    ROOT, '..', 'shared', 'data', 'coco_mini', 'annotations', 'instances_train2017.json'))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default=DEFAULT_DATASET,
                   help='a --dataset argument as the training tool takes (default: coco_mini)')
    p.add_argument('--cfg', dest='cfg_file', help='YAML config to merge first')
    p.add_argument('--set', dest='set_cfgs', nargs='+', default=[],
                   help='config KEY VALUE pairs, e.g. TRAIN.SCALES "(600,)"')
    p.add_argument('--scales', help='TRAIN.SCALES, comma-separated (default: the config\'s, '
                   'or 800 without --cfg)')
    p.add_argument('--max-size', type=int,
                   help='TRAIN.MAX_SIZE (default: the config\'s, or 1333 without --cfg)')
    p.add_argument('--no-fpn', action='store_true',
                   help='no padding to FPN.COARSEST_STRIDE (on by default without --cfg)')
    p.add_argument('--batch-size', type=int, default=2, help='images per iteration (all GPUs)')
    p.add_argument('--num-gpus', type=int, default=1, help='blobs per batch')
    p.add_argument('--workers', default='0,1,2', help='worker counts to time, comma-separated')
    p.add_argument('--iters', type=int, default=60, help='timed batches per worker count')
    p.add_argument('--warmup', type=int, default=4, help='untimed batches first')
    return p.parse_args()


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.cfg_file:
        merge_cfg_from_file(args.cfg_file)
    else:  # the usual COCO set-up: e2e_*_R-50-FPN_1x
        cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE, cfg.FPN.FPN_ON = (800,), 1333, True
    if args.scales:
        cfg.TRAIN.SCALES = tuple(int(s) for s in args.scales.split(','))
    if args.max_size:
        cfg.TRAIN.MAX_SIZE = args.max_size
    if args.no_fpn:
        cfg.FPN.FPN_ON = False
    if args.set_cfgs:
        merge_cfg_from_list(args.set_cfgs)
    names, _ = dataset_catalog.resolve_dataset_arg(args.dataset, training=True)
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names, ())

    print('pydetectron loader benchmark, %s' % datetime.date.today().isoformat())
    print('machine: %s, %d CPUs, Python %s' % (platform.platform(), os.cpu_count(),
                                               platform.python_version()))
    print('dataset: %s (%d roidb entries with flips)' % (', '.join(names), len(roidb)))
    print('TRAIN.SCALES %s, MAX_SIZE %d, FPN padding %s, batch %d over %d GPU blob(s)' % (
        cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE, cfg.FPN.FPN_ON, args.batch_size, args.num_gpus))
    print('%8s %10s %12s %18s  %s' % ('workers', 'images/s', 'per worker', 'per worker-CPU-s',
                                       'last blob'))
    for w in (int(x) for x in args.workers.split(',')):
        rate, per_cpu, shape = time_loader(roidb, ratio_list, ratio_index, args, w)
        per_worker = rate if w == 0 else rate / w
        print('%8d %10.1f %12.1f %18.1f  %s' % (w, rate, per_worker, per_cpu, shape))


if __name__ == '__main__':
    main()
