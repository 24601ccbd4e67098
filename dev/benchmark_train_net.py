#!/usr/bin/env python
"""tools/train_net_step.py itself on real photos against a torchvision training loop, in turns.

Ours: ``tools/train_net_step.py`` run as a user runs it (a subprocess, its DataLoader workers,
statistics and logging included, checkpoints off) on a COCO-format dataset (default: coco_mini
train2017, 80 photos + flips) with Detectron's Mask R-CNN R-50-FPN config (frozen-BN body from
random weights: ``--allow_random_frozen_bn``), at TRAIN.SCALES (800,) / MAX_SIZE 1333. Its time
per step is the difference of two runs' wall times, ``--steps`` and ``--short`` steps, divided
by the difference in steps: start-up, model building and the first steps cancel out (when they
take as long in both runs). Beside it, ``seconds_per_step_in_run``: the long run's own time per
step, from the arrival times of its "[Step k / N]" console lines (after ``--warmup`` steps to
the last); the record warns when the two disagree by more than 25%.

The step counts: ``--bs`` makes train_net_step.py scale SOLVER.MAX_ITER by the config's batch
(NUM_GPUS x TRAIN.IMS_PER_BATCH, 16 for Detectron's configs) / --bs, so a run's steps come in
multiples of that ratio (8 at --bs 2): SOLVER.MAX_ITER is chosen as the nearest to --steps /
--short, the longer run at least one unit longer, and each run's own count is read from its
"Step k / N" lines.

Torchvision: ``MaskRCNN`` on a ResNet-50-FPN with FrozenBatchNorm2d and conv1 + layer1 frozen
(torchvision's configuration when trained from ImageNet weights; Detectron's FREEZE_AT 2), random
weights, min/max size --scale / --max-size, the same photos and ground-truth masks, each also
flipped left-right (Detectron's TRAIN.USE_FLIPPED), in batches grouped by aspect (landscape or
portrait: Detectron's TRAIN.ASPECT_GROUPING, which ours samples by) through a DataLoader with the
same batch and number of workers; SGD with momentum 0.9 and weight decay 1e-4 at Detectron's
linear LR (0.0025 per 2 images) and linear warm-up (1/3 over 500 steps); the frozen BN layers
start from the first batch's statistics, as ours' AffineChannels do (--allow_random_frozen_bn);
a step ends with the host reading the loss (each side's last loss is in its record). Its time
per step is the mean over ``--steps`` steps after ``--warmup`` steps (the wall time of the loop
divided by the steps: data waits included, as in ours' difference of wall times); the median is
reported too.
Its defaults (TF32 convolutions, cuDNN autotuning off) are those train_net_step.py keeps.

bf16: ``--amp`` runs ours with ``--amp`` (bfloat16 autocast in the forward pass) and the
torchvision loop with its forward and losses under ``torch.autocast(dtype=torch.bfloat16)``
(``--extra=--amp`` does the same). GroupNorm: ``--cfg
configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml`` (GroupNorm body, FPN and heads,
FREEZE_AT 0, trained from scratch). torchvision ships no GroupNorm Mask R-CNN, but its parts take
a norm layer: ``--tv-model gn`` (the default where ``--cfg``'s body uses GroupNorm,
``--tv-model auto``) builds the same model from them -- ResNet-50 with ``nn.GroupNorm(32, C)``
(eps 1e-5) in place of every BatchNorm, all five stages trained (FREEZE_AT 0), the FPN's lateral and
output convolutions with GroupNorm (FPN.USE_GN), the box head as 4 x (3x3 conv, 256, GroupNorm,
ReLU) + one fc of 1024 (``roi_Xconv1fc_gn_head``), the mask head as 4 x (3x3 conv, 256, GroupNorm,
ReLU) before the 2x deconvolution (``mask_rcnn_fcn_head_v1up4convs_gn``) -- so the ratio is like
for like. ``--tv-model frozen_bn`` pairs any config with torchvision's standard frozen-BN model
instead (what the GroupNorm figures were paired with before: what the GroupNorm model costs
against torchvision's standard one).

    python dev/benchmark_train_net.py --bs 2 --rounds 2 --json train_net.json
    python dev/benchmark_train_net.py --bs 8 --amp --steps 64 --short 16   # both in bf16
    python dev/benchmark_train_net.py --bs 2 \
        --cfg configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml --label 'ours GN'

Two commits on one machine: ``--tree DIR`` runs ``DIR/tools/train_net_step.py`` (another copy,
e.g. ``git archive <commit> tools lib | tar -x -C .bench_tree``, with pydetectron._C copied into
``DIR/lib/pydetectron``: dev/gpu/trainnet.sh does that for the folders in TREES), configs and
data from this checkout.

CPU rehearsal (torchvision's compiled ops built for another torch: dev/tv_cpu_shim.py, never
for numbers):

    PYDETECTRON_TV_SHIM=1 PYTHONPATH=/tmp/tvpkg python dev/benchmark_train_net.py --device cpu \
        --scale 200 --max-size 333 --steps 6 --short 3 --warmup 1 --rounds 1 --nw 1 --json x.json
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
    p.add_argument('--warmup', type=int, default=10, help='torchvision: untimed steps per round')
    p.add_argument('--amp', action='store_true',
                   help='both in bfloat16 autocast (ours: train_net_step.py --amp)')
    p.add_argument('--cfg', default=CONFIG, help='our config')
    p.add_argument('--extra', action='append', default=[],
                   help='more train_net_step.py arguments for ours (repeatable: '
                   '--extra=--cuda_graphs --extra=--shape_buckets=160)')
    p.add_argument('--lr', type=float, default=None,
                   help="both sides' learning rate after the batch scaling (ours: "
                        "train_net_step.py --lr); default Detectron's linear rule, 0.0025 per 2 "
                        'images, which from random weights diverges at 16 images and more')
    p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                   help="an environment variable for ours' train_net_step.py runs only "
                        '(repeatable), e.g. --env PYDETECTRON_FUSED_GROUP_NORM=1')
    p.add_argument('--label', default=None, help='name of ours in the report')
    p.add_argument('--tree', default=None,
                   help="ours from another copy of the project (a folder with its tools/ and "
                        "lib/, its pydetectron._C built or copied in): an A/B of two commits "
                        "on one machine")
    p.add_argument('--tv-model', default='auto', choices=('auto', 'frozen_bn', 'gn'),
                   help="torchvision's model: 'frozen_bn' (its standard Mask R-CNN), 'gn' (the "
                        "GroupNorm Mask R-CNN of Detectron's GN configs, built from torchvision's "
                        "parts), 'auto' (default): 'gn' where --cfg's body uses GroupNorm")
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--device', default='cuda')
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    for name in ('bs', 'steps', 'short', 'rounds'):
        if getattr(args, name) < 1:
            p.error('--%s must be >= 1' % name)
    if args.warmup < 0 or args.nw < 0:
        p.error('--warmup and --nw must be >= 0')
    if args.tree is not None and not os.path.isfile(
            os.path.join(args.tree, 'tools', 'train_net_step.py')):
        p.error('--tree %s: no tools/train_net_step.py there' % args.tree)
    if args.short >= args.steps:
        p.error('--short (%d) must be below --steps (%d)' % (args.short, args.steps))
    for item in args.env:
        if '=' not in item or not item.split('=', 1)[0]:
            p.error('--env: KEY=VALUE, got %r' % item)
    impls = args.impl.split(',')
    if not impls or any(i not in ('ours', 'torchvision') for i in impls):
        p.error("--impl: a comma-separated list of 'ours' and 'torchvision', got %r"
                % args.impl)
    if args.lr is not None and not args.lr > 0:
        p.error('--lr must be > 0, got %r' % args.lr)
    extra = [a for e in args.extra for a in shlex.split(e)]
    if args.lr is not None:
        extra += ['--lr', repr(args.lr)]
    if '--amp' in extra:
        args.amp = True
    elif args.amp:
        extra.append('--amp')
    args.extra_args = extra
    return args


def config_batch(cfg_path):
    """Images per step the config was written for: NUM_GPUS x TRAIN.IMS_PER_BATCH (Detectron's
    defaults 1 and 2 where the file leaves them out)."""
    import yaml
    with open(cfg_path) as f:
        doc = yaml.safe_load(f) or {}
    return int(doc.get('NUM_GPUS', 1)) * int((doc.get('TRAIN') or {}).get('IMS_PER_BATCH', 2))


def config_body(cfg_path):
    """What the torchvision model copies of the config's conv body: ``(group_norm, freeze_at)``
    -- whether it normalises with GroupNorm (RESNETS.USE_GN, or a ``gn`` transformation or stem
    function, as Detectron's GN configs name them) and RESNETS' FREEZE_AT (the stages with no
    gradient), read as the tools read a config (pydetectron's merge, Detectron.pytorch's YAML
    quirks included)."""
    sys.path.insert(0, os.path.join(ROOT, 'lib'))
    from pydetectron.core import config as core_config
    core_config.reset_cfg()
    try:
        core_config.merge_cfg_from_file(cfg_path)
        resnets = core_config.cfg.RESNETS
        group_norm = bool(resnets.USE_GN) or any(
            '_gn' in f for f in (resnets.TRANS_FUNC, resnets.STEM_FUNC))
        # TRAIN.FREEZE_AT (Detectron's name) or RESNETS.FREEZE_AT (Detectron.pytorch's), the
        # one set away from the default, as assert_and_infer_cfg reconciles them
        train = core_config.cfg.TRAIN.FREEZE_AT
        return group_norm, int(train if train != 2 else resnets.FREEZE_AT)
    finally:
        core_config.reset_cfg()


def tv_model_for(choice, group_norm):
    """--tv-model's value with 'auto' resolved: 'gn' for a config whose body uses GroupNorm
    (``config_body``'s first value)."""
    if choice != 'auto':
        return choice
    return 'gn' if group_norm else 'frozen_bn'


def max_iters(steps, short, bs, cfg_batch):
    """SOLVER.MAX_ITER for the short and the long run, so that train_net_step.py (which scales
    MAX_ITER by cfg_batch / bs) runs about ``short`` and ``steps`` steps, the long run at least
    one MAX_ITER unit longer."""
    unit = bs / float(cfg_batch)
    mi_short = max(1, int(short * unit + 0.5))
    mi_long = max(mi_short + 1, int(steps * unit + 0.5))
    return mi_short, mi_long


def steps_run(mi, bs, cfg_batch):
    """The steps train_net_step.py runs for SOLVER.MAX_ITER ``mi`` at --bs ``bs``
    (lib/pydetectron/engine/train_setup.py's rounding)."""
    return int(mi * cfg_batch / float(bs) + 0.5)


def seconds_per_step(t_short, n_short, t_long, n_long):
    """Time per step from two runs' wall times: start-up and the first steps cancel out."""
    if n_long <= n_short:
        raise ValueError('the long run (%d steps) must be longer than the short one (%d)'
                         % (n_long, n_short))
    return (t_long - t_short) / float(n_long - n_short)


def default_data():
    data = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini'))
    if not os.path.isdir(data):
        data = os.path.join(ROOT, '.gpu_data', 'coco_mini')
    return data


def run_ours(args, max_iter, out_dir):
    """One train_net_step.py run -> {'wall': seconds, 'steps': steps run, 'mem': peak MiB on the
    GPU or None, 'loss': last logged loss or None, 'marks': [(seconds since the start, k) for
    each "[Step k / N]" line, timed as it arrives (the child's output unbuffered)]}."""
    spec = 'coco_json:%s:%s' % (os.path.join(args.data, 'annotations', 'instances_train2017.json'),
                                os.path.join(args.data, 'images', 'train2017'))
    cmd = [sys.executable, os.path.join(args.tree or ROOT, 'tools', 'train_net_step.py'),
           '--dataset', spec, '--cfg', os.path.join(ROOT, args.cfg), '--bs', str(args.bs),
           '--nw', str(args.nw), '--no_save', '--skip-test', '--allow_random_frozen_bn',
           '--output_dir', out_dir, '--disp_interval', '20',
           '--set', 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False',
           'SOLVER.MAX_ITER', str(max_iter), 'TRAIN.SCALES', '(%d,)' % args.scale,
           'TRAIN.MAX_SIZE', str(args.max_size), 'TRAIN.WEIGHTS', "''"]
    if args.device == 'cpu':
        cmd.append('--no_cuda')
    cmd += args.extra_args
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.update(item.split('=', 1) for item in args.env)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines, marks = [], []
    for line in proc.stdout:
        m = re.search(r'\[Step (\d+) / \d+\]', line)
        if m:
            marks.append((time.perf_counter() - t, int(m.group(1))))
        lines.append(line)
    rc = proc.wait()
    dt = time.perf_counter() - t
    text = ''.join(lines)
    if rc != 0:
        sys.stderr.write(text[-6000:])
        raise SystemExit('train_net_step.py failed (%d)' % rc)
    steps, mem, loss = parse_console(text)
    return {'wall': dt, 'steps': steps, 'mem': mem, 'loss': loss, 'marks': marks}


def seconds_per_step_in_run(marks, warmup):
    """Time per step inside one run, from the arrival times of its "[Step k / N]" lines: from
    the first line past ``warmup`` steps (else the first line) to the last; None with fewer than
    two lines. Start-up is outside it by construction, where the two-run difference relies on it
    cancelling out (it does not on a loaded machine)."""
    if len(marks) < 2:
        return None
    first = next((m for m in marks[:-1] if m[1] > warmup), marks[0])
    last = marks[-1]
    if last[1] <= first[1]:
        return None
    return (last[0] - first[0]) / float(last[1] - first[1])


def parse_console(text):
    """What a train_net_step.py run printed -> (its step count N of the "[Step k / N]" lines,
    the largest "mem: M MB" (peak MiB allocated on the GPU; None on the CPU), the last "loss:"
    (the console's median of the last 20 steps)). ``--no_save`` writes no metrics.jsonl: the
    console is the only record. --bs adapts the schedule (SOLVER.MAX_ITER scaled by the config's
    batch / --bs): the run's own count of steps is the one to use."""
    totals = re.findall(r'Step \d+ / (\d+)\]', text)
    if not totals:
        raise SystemExit('train_net_step.py printed no "[Step k / N]" line')
    mems = [int(m) for m in re.findall(r'mem: (\d+)MB', text)]
    losses = re.findall(r'\bloss: ([-+0-9.eEnaif]+),', text)
    return (int(totals[-1]), max(mems) if mems else None,
            float(losses[-1]) if losses else None)


def torchvision_mask_rcnn(tv_model, scale, max_size, num_classes=91, freeze_at=0):
    """torchvision's Mask R-CNN R-50-FPN, random weights: 'frozen_bn' is its standard model
    (FrozenBatchNorm2d, conv1 + layer1 frozen: Detectron's FREEZE_AT 2); 'gn' is Detectron's
    GroupNorm Mask R-CNN (the module docstring) built from torchvision's parts, the stem and
    the first ``freeze_at - 1`` stages without gradients (Detectron's RESNETS.FREEZE_AT: 0 for
    the scratch config, 2 for those started from ImageNet weights)."""
    import functools
    from torch import nn
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    from torchvision.ops import misc as misc_nn_ops
    if tv_model == 'frozen_bn':
        body = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        return MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=num_classes,
                        min_size=scale, max_size=max_size)
    if tv_model != 'gn':
        raise ValueError('tv_model: frozen_bn or gn, got %r' % (tv_model,))
    gn = functools.partial(nn.GroupNorm, 32, eps=1e-5)       # gn(C): 32 groups of C / 32
    body = resnet50(weights=None, norm_layer=gn)
    backbone = _resnet_fpn_extractor(body, 5 - freeze_at, norm_layer=gn)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256] * 4, [1024],
                                  norm_layer=gn)
    mask_head = MaskRCNNHeads(backbone.out_channels, [256] * 4, 1, norm_layer=gn)
    return MaskRCNN(backbone, num_classes=num_classes, min_size=scale, max_size=max_size,
                    box_head=box_head, mask_head=mask_head)


class TorchvisionTraining:
    def __init__(self, args):
        import torch
        self.args = args
        self.device = torch.device(args.device)
        self.amp = args.amp
        group_norm, freeze_at = config_body(os.path.join(ROOT, args.cfg))
        self.tv_model = tv_model_for(args.tv_model, group_norm)
        self.dataset = _CocoMasks(args.data)
        torch.manual_seed(0)
        model = torchvision_mask_rcnn(self.tv_model, args.scale, args.max_size,
                                      freeze_at=freeze_at)
        self.model = model.to(self.device).train()
        self._frozen_bn_from_data()
        params = [p for p in self.model.parameters() if p.requires_grad]
        base_lr = args.lr if args.lr is not None else 0.0025 * args.bs / 2
        self.opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
        # Detectron's linear warm-up (SOLVER.WARM_UP_FACTOR 1/3 over WARM_UP_ITERS 500), as ours
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda it: 1.0 if it >= 500 else 1.0 / 3 + (1 - 1.0 / 3) * it / 500.0)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_AspectGroupedBatches(self.dataset.landscape, args.bs),
            num_workers=args.nw, collate_fn=_collate, persistent_workers=args.nw > 0)
        self.batches = self._forever()
        self.last_loss = None

    def _frozen_bn_from_data(self):
        """The counterpart of ours' --allow_random_frozen_bn start (AffineChannel scales and
        shifts from one batch's statistics): the frozen BN layers of the body get the mean and
        variance of their inputs on the first batch, computed layer after layer as a BatchNorm in
        training mode would. Without it the random body's activations grow ~2x in variance per
        block, and the losses (and how many proposals survive) stop resembling ours'."""
        import torch
        from torchvision.ops.misc import FrozenBatchNorm2d
        body = self.model.backbone.body
        frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
        if not frozen:
            return
        hooks = []

        def set_stats(module, inputs):
            x = inputs[0].float()
            module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

        for m in frozen:
            hooks.append(m.register_forward_pre_hook(set_stats))
        images = [self.dataset[k][0].to(self.device) for k in range(self.args.bs)]
        try:
            with torch.no_grad():
                batch, _ = self.model.transform(images)
                body(batch.tensors)
        finally:
            for h in hooks:
                h.remove()

    def _forever(self):
        while True:
            for b in self.loader:
                yield b

    def step(self):
        import torch
        images, targets = next(self.batches)
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()}
                   for t in targets]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            losses = self.model(images, targets)
            loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.last_loss = loss.detach().item()    # the host reads the loss: the step is over
        return self.last_loss

    def run(self, steps, warmup):
        """-> (mean seconds per step, median, peak MiB allocated on the GPU or None)."""
        import torch
        for _ in range(warmup):
            self.step()
        cuda = self.device.type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        start = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        mem = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if cuda else None
        return total / steps, statistics.median(times), mem


def _collate(batch):
    return tuple(zip(*batch))


class _AspectGroupedBatches:
    """Detectron's TRAIN.ASPECT_GROUPING, as ours samples: each epoch, the shuffled indices split
    into landscape (width >= height) and portrait images, batches of ``bs`` cut from each group
    (an incomplete tail dropped), the batches shuffled."""

    def __init__(self, landscape, bs, seed=0):
        self.landscape = list(landscape)
        self.bs = bs
        self.epoch = 0
        self.seed = seed

    def batches(self):
        import random
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.landscape)))
        rng.shuffle(order)
        out = []
        for flag in (True, False):
            group = [i for i in order if self.landscape[i] == flag]
            out += [group[k:k + self.bs] for k in range(0, len(group) - self.bs + 1, self.bs)]
        rng.shuffle(out)
        return out

    def __iter__(self):
        out = self.batches()
        self.epoch += 1
        return iter(out)

    def __len__(self):
        return sum(sum(1 for f in self.landscape if f == flag) // self.bs
                   for flag in (True, False))


class _CocoMasks:
    """coco_mini train2017 for torchvision: RGB float image in [0, 1], boxes (x1, y1, x2, y2
    exclusive), COCO category ids as labels, (n, H, W) uint8 masks; crowd and empty boxes
    dropped. Like Detectron's TRAIN.USE_FLIPPED roidb, each photo comes twice, as it is and
    flipped left-right (indices ``len(ids)`` and up)."""

    def __init__(self, data):
        from pycocotools.coco import COCO
        self.coco = COCO(os.path.join(data, 'annotations', 'instances_train2017.json'))
        self.dir = os.path.join(data, 'images', 'train2017')
        self.ids = [i for i in sorted(self.coco.imgs)
                    if any(not a['iscrowd'] and a['bbox'][2] > 1 and a['bbox'][3] > 1
                           for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=i)))]
        land = [self.coco.imgs[i]['width'] >= self.coco.imgs[i]['height'] for i in self.ids]
        self.landscape = land + land

    def __len__(self):
        return 2 * len(self.ids)

    def __getitem__(self, k):
        import cv2
        import numpy as np
        import torch
        flip = k >= len(self.ids)
        info = self.coco.imgs[self.ids[k % len(self.ids)]]
        im = cv2.imread(os.path.join(self.dir, info['file_name']))
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info['id']))
                if not a['iscrowd'] and a['bbox'][2] > 1 and a['bbox'][3] > 1]
        boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                           a['bbox'][1] + a['bbox'][3]] for a in anns], dtype=np.float32)
        masks = np.stack([self.coco.annToMask(a) for a in anns])
        rgb = im[:, :, ::-1]
        if flip:
            width = im.shape[1]
            rgb = rgb[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                              boxes[:, 3]], axis=1)
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
        return image, {'boxes': torch.from_numpy(boxes),
                       'labels': torch.tensor([a['category_id'] for a in anns]),
                       'masks': torch.from_numpy(masks.copy())}


def _tv_cpu_shim():
    """PYDETECTRON_TV_SHIM=1: torchvision on dev/tv_cpu_shim.py's stand-in ops (CPU rehearsal of
    this script where torchvision's compiled ops do not match torch; never on the GPU)."""
    if os.environ.get('PYDETECTRON_TV_SHIM') == '1':
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tv_cpu_shim
        tv_cpu_shim.maybe_install()


def main(argv=None):
    args = parse_args(argv)
    args.data = args.data or default_data()
    _tv_cpu_shim()
    impls = args.impl.split(',')
    label = args.label or ' '.join(['ours'] + args.env + args.extra_args)
    cfg_batch = config_batch(os.path.join(ROOT, args.cfg))
    mi_short, mi_long = max_iters(args.steps, args.short, args.bs, cfg_batch)
    if 'ours' in impls:
        print('ours: SOLVER.MAX_ITER %d and %d -> %d and %d steps at --bs %d (config batch %d)'
              % (mi_short, mi_long, steps_run(mi_short, args.bs, cfg_batch),
                 steps_run(mi_long, args.bs, cfg_batch), args.bs, cfg_batch), flush=True)
    tv = TorchvisionTraining(args) if 'torchvision' in impls else None
    tv_label = 'torchvision' + (' GN' if tv is not None and tv.tv_model == 'gn' else '') + (
        ' bf16' if args.amp else '')
    records = []
    work = tempfile.mkdtemp(prefix='bench_train_net_')
    for r in range(args.rounds):
        if 'ours' in impls:
            short = run_ours(args, mi_short, os.path.join(work, 'short%d' % r))
            long = run_ours(args, mi_long, os.path.join(work, 'long%d' % r))
            per_step = seconds_per_step(short['wall'], short['steps'], long['wall'],
                                        long['steps'])
            in_run = seconds_per_step_in_run(long['marks'], args.warmup)
            rec = {'impl': label, 'round': r, 'bs': args.bs, 'cfg': args.cfg,
                   'seconds_per_step': per_step,
                   'images_per_s': args.bs / per_step if per_step > 0 else None,
                   'seconds_per_step_in_run': in_run,
                   'images_per_s_in_run': args.bs / in_run if in_run else None,
                   'peak_gpu_mib': long['mem'],
                   'wall_short_s': short['wall'], 'wall_long_s': long['wall'],
                   'steps_short': short['steps'], 'steps_long': long['steps'],
                   'last_loss': long['loss']}
            if per_step <= 0 or (in_run and abs(per_step / in_run - 1) > 0.25):
                rec['warning'] = ('the two-run difference and the in-run time disagree: '
                                  'start-up time varied between the runs')
            records.append(rec)
            print(json.dumps(rec), flush=True)
        if tv is not None:
            per_step, median, mem = tv.run(args.steps, args.warmup)
            rec = {'impl': tv_label, 'tv_model': tv.tv_model, 'round': r, 'bs': args.bs,
                   'amp': args.amp,
                   'seconds_per_step': per_step, 'images_per_s': args.bs / per_step,
                   'median_seconds_per_step': median, 'peak_gpu_mib': mem,
                   'steps': args.steps, 'warmup': args.warmup, 'last_loss': tv.last_loss}
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
