#!/usr/bin/env python
"""tools/train_net_step.py itself on real photos against a torchvision training loop, in turns.

Ours: ``tools/train_net_step.py`` run as a user runs it (a subprocess, its DataLoader workers,
statistics and logging included, checkpoints off) on a COCO-format dataset (default: coco_mini
train2017, 80 photos + flips) with Detectron's Mask R-CNN R-50-FPN config (frozen-BN body from
random weights: ``--allow_random_frozen_bn``), at TRAIN.SCALES (800,) / MAX_SIZE 1333. Its time
per step is the difference of two runs' wall times, ``--steps`` and ``--short`` steps, divided
by the difference in steps: start-up, model building and the first steps cancel out.

Torchvision: ``MaskRCNN`` on a ResNet-50-FPN with FrozenBatchNorm2d and conv1 + layer1 frozen
(torchvision's configuration when trained from ImageNet weights; Detectron's FREEZE_AT 2), random
weights, min/max size 800 / 1333, the same images and ground-truth masks through a DataLoader
with the same number of workers, SGD; a step ends with the host reading the loss. Its time per
step is the median over ``--steps`` steps after 10 warm-up steps.

    python dev/benchmark_train_net.py --bs 2 --rounds 2 --json train_net.json
    python dev/benchmark_train_net.py --bs 2 --impl ours --extra=--amp     # ours in bf16
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join('configs', 'baselines', 'e2e_mask_rcnn_R-50-FPN_1x.yaml')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='a coco_mini-like folder (annotations/, images/)')
    p.add_argument('--impl', default='ours,torchvision')
    p.add_argument('--bs', type=int, default=2, help='images per step')
    p.add_argument('--nw', type=int, default=4, help='DataLoader workers, both')
    p.add_argument('--steps', type=int, default=120)
    p.add_argument('--short', type=int, default=20, help="ours: the shorter run's steps")
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--cfg', default=CONFIG, help='our config')
    p.add_argument('--extra', default='', help='more train_net_step.py arguments for ours')
    p.add_argument('--label', default=None, help='name of ours in the report')
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--device', default='cuda')
    p.add_argument('--json', default=None)
    return p.parse_args(argv)


def default_data():
    data = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini'))
    if not os.path.isdir(data):
        data = os.path.join(ROOT, '.gpu_data', 'coco_mini')
    return data


def run_ours(args, steps, out_dir):
    spec = 'coco_json:%s:%s' % (os.path.join(args.data, 'annotations', 'instances_train2017.json'),
                                os.path.join(args.data, 'images', 'train2017'))
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train_net_step.py'),
           '--dataset', spec, '--cfg', os.path.join(ROOT, args.cfg), '--bs', str(args.bs),
           '--nw', str(args.nw), '--no_save', '--skip-test', '--allow_random_frozen_bn',
           '--output_dir', out_dir, '--disp_interval', '20',
           '--set', 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False', 'SOLVER.MAX_ITER',
           str(max(1, round(steps * args.bs / 16.0))), 'TRAIN.SCALES', '(%d,)' % args.scale, 'TRAIN.MAX_SIZE', str(args.max_size),
           'TRAIN.WEIGHTS', "''"]
    cmd += shlex.split(args.extra)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit('train_net_step.py failed (%d)' % proc.returncode)
    # --bs adapts the schedule (SOLVER.MAX_ITER scaled by the config's batch / --bs): the run's
    # own count of steps, as it prints it
    totals = re.findall(r'Step \d+ / (\d+)', proc.stdout + proc.stderr)
    if not totals:
        raise SystemExit('train_net_step.py printed no "Step k / N" line')
    mem = None
    metrics = os.path.join(out_dir, 'metrics.jsonl')
    if os.path.exists(metrics):
        with open(metrics) as f:
            mems = [json.loads(line).get('mem') for line in f if '"train"' in line]
        mems = [m for m in mems if m is not None]
        mem = max(mems) if mems else None
    return dt, mem, int(totals[-1])


class TorchvisionTraining:
    def __init__(self, args):
        import torch
        from torchvision.models import resnet50
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.ops import misc as misc_nn_ops
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        body = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        model = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=args.scale,
                         max_size=args.max_size)
        self.model = model.to(self.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.0025 * args.bs / 2, momentum=0.9,
                                   weight_decay=1e-4)
        self.loader = torch.utils.data.DataLoader(
            _CocoMasks(args.data), batch_size=args.bs, shuffle=True, num_workers=args.nw,
            collate_fn=lambda b: tuple(zip(*b)), drop_last=True, persistent_workers=True)
        self.batches = self._forever()

    def _forever(self):
        while True:
            for b in self.loader:
                yield b

    def step(self):
        images, targets = next(self.batches)
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()}
                   for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss)    # the host reads the loss: the step is over

    def run(self, steps, warmup=10):
        import torch
        for _ in range(warmup):
            self.step()
        cuda = self.device.type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t)
        mem = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if cuda else None
        return statistics.median(times), mem


class _CocoMasks:
    """coco_mini train2017 for torchvision: RGB float image in [0, 1], boxes (x1, y1, x2, y2
    exclusive), COCO category ids as labels, (n, H, W) uint8 masks; crowd and empty boxes
    dropped."""

    def __init__(self, data):
        from pycocotools.coco import COCO
        self.coco = COCO(os.path.join(data, 'annotations', 'instances_train2017.json'))
        self.dir = os.path.join(data, 'images', 'train2017')
        self.ids = [i for i in sorted(self.coco.imgs)
                    if any(not a['iscrowd'] and a['bbox'][2] > 1 and a['bbox'][3] > 1
                           for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=i)))]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        import cv2
        import numpy as np
        import torch
        info = self.coco.imgs[self.ids[k]]
        im = cv2.imread(os.path.join(self.dir, info['file_name']))
        image = torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).float().div_(255.0)
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info['id']))
                if not a['iscrowd'] and a['bbox'][2] > 1 and a['bbox'][3] > 1]
        boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                           a['bbox'][1] + a['bbox'][3]] for a in anns], dtype=np.float32)
        masks = np.stack([self.coco.annToMask(a) for a in anns])
        return image, {'boxes': torch.from_numpy(boxes),
                       'labels': torch.tensor([a['category_id'] for a in anns]),
                       'masks': torch.from_numpy(masks)}


def main(argv=None):
    args = parse_args(argv)
    args.data = args.data or default_data()
    impls = args.impl.split(',')
    label = args.label or ('ours ' + args.extra).strip()
    tv = TorchvisionTraining(args) if 'torchvision' in impls else None
    records = []
    work = tempfile.mkdtemp(prefix='bench_train_net_')
    for r in range(args.rounds):
        if 'ours' in impls:
            t_short, _, n_short = run_ours(args, args.short, os.path.join(work, 'short%d' % r))
            t_long, mem, n_long = run_ours(args, args.steps, os.path.join(work, 'long%d' % r))
            per_step = (t_long - t_short) / (n_long - n_short)
            rec = {'impl': label, 'round': r, 'bs': args.bs, 'seconds_per_step': per_step,
                   'images_per_s': args.bs / per_step, 'peak_gpu_mib': mem,
                   'wall_short_s': t_short, 'wall_long_s': t_long,
                   'steps_short': n_short, 'steps_long': n_long}
            records.append(rec)
            print(json.dumps(rec), flush=True)
        if tv is not None:
            per_step, mem = tv.run(args.steps)
            rec = {'impl': 'torchvision', 'round': r, 'bs': args.bs,
                   'seconds_per_step': per_step, 'images_per_s': args.bs / per_step,
                   'peak_gpu_mib': mem}
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.json:
        import torch
        with open(args.json, 'w') as f:
            json.dump({'device': torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu',
                       'torch': torch.__version__,
                       'records': records}, f, indent=1)
    return records


if __name__ == '__main__':
    main()
