"""A tiny fake detector and a fake loader implementing the two contracts the engine relies on.

* Model (training mode): ``model(data, im_info, roidb)`` -> ``{'losses': {name: scalar},
  'metrics': {name: scalar}}``; it uses the global torch RNG (dropout, like RoI sampling) so a
  resume must restore the random streams; it has biases, a GroupNorm and a frozen parameter.
* Loader: batches ``{'data': [blob per GPU], 'im_info': [...], 'roidb': [[gt dict per image]]}``
  with a different blob size per GPU, a pure function of (seed, minibatch index), restartable at
  any index (``start_iter``), infinite.

Also runnable as a script (the signal and torchrun tests start it in a subprocess); see
``main``.
"""
import argparse
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 3


class FakeDetector(nn.Module):
    def __init__(self, dropout=0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1_gn = nn.GroupNorm(2, 8)
        self.res_frozen_s = nn.Parameter(torch.ones(8), requires_grad=False)  # like AffineChannel
        self.fc6 = nn.Linear(8, 16)
        self.cls_score = nn.Linear(16, NUM_CLASSES)
        self.bbox_pred = nn.Linear(16, 4)
        self.dropout = dropout
        self.forward_calls = 0
        self.nan_at_call = None   # make loss_bbox NaN at this forward call (tests)
        self.on_forward = None    # callback(call_index) (tests)
        self.target_generator = None   # like Generalized_RCNN's: a private stream for sampling

    def forward(self, data, im_info, roidb=None):
        self.forward_calls += 1
        if self.on_forward is not None:
            self.on_forward(self.forward_calls)
        x = F.relu(self.conv1_gn(self.conv1(data))) * self.res_frozen_s.view(1, -1, 1, 1)
        feat = x.mean(dim=(2, 3))                                     # (N, 8)
        feat = F.relu(self.fc6(feat))                                 # (N, 16)
        feat = F.dropout(feat, self.dropout, self.training)           # global RNG
        if self.target_generator is not None and self.training:
            keep = torch.rand(feat.shape, generator=self.target_generator) > 0.1
            feat = feat * keep.to(feat.device)
        labels = torch.cat([r['gt_classes'][:1] for r in roidb]).to(data.device)
        targets = torch.stack([r['boxes'][0] for r in roidb]).to(data.device)
        targets = targets / im_info[:, 1:2].repeat(1, 4)              # normalised by width
        logits = self.cls_score(feat)
        loss_cls = F.cross_entropy(logits, labels)
        loss_bbox = F.smooth_l1_loss(self.bbox_pred(feat), targets, beta=1.0)
        if self.nan_at_call is not None and self.forward_calls == self.nan_at_call:
            loss_bbox = loss_bbox * float('nan')
        acc = (logits.argmax(1) == labels).float().mean()
        return {'losses': {'loss_cls': loss_cls, 'loss_bbox': loss_bbox},
                'metrics': {'accuracy_cls': acc}}


def make_batch(seed, index, num_gpus=1, ims_per_gpu=2):
    """Minibatch ``index`` of the fake sequence: a pure function of (seed, index)."""
    g = torch.Generator().manual_seed(seed * 1000003 + index)
    data, im_info, roidbs = [], [], []
    for _ in range(num_gpus):
        h, w = (int(v) for v in torch.randint(6, 12, (2,), generator=g))
        data.append(torch.randn(ims_per_gpu, 3, h, w, generator=g) * 20)
        im_info.append(torch.tensor([[h, w, 1.0]] * ims_per_gpu, dtype=torch.float32))
        roidb = []
        for _ in range(ims_per_gpu):
            x1, y1 = torch.rand(2, generator=g) * 4
            boxes = torch.stack([x1, y1, x1 + 3, y1 + 2]).view(1, 4)
            roidb.append({'boxes': boxes,
                          'gt_classes': torch.randint(0, NUM_CLASSES, (1,), generator=g)})
        roidbs.append(roidb)
    return {'data': data, 'im_info': im_info, 'roidb': roidbs}


class FakeLoader:
    """Infinite, restartable: iteration starts at minibatch ``start_iter``."""

    def __init__(self, seed=0, start_iter=0, num_gpus=1, ims_per_gpu=2, rank=0, world_size=1,
                 length=None):
        self.seed, self.start_iter = seed, start_iter
        self.num_gpus, self.ims_per_gpu = num_gpus, ims_per_gpu
        self.rank, self.world_size = rank, world_size
        self.length = length   # finite loaders end after `length` minibatches (then restart)
        self.created = 0

    def __iter__(self):
        # The global minibatch sequence is the same on every rank; rank r takes minibatches
        # r, r + N, ... of it (distributed.shard_batches), restarted at start_iter local ones.
        from pydetectron.engine.distributed import shard_batches
        indices = shard_batches(itertools.count(self.start_iter * self.world_size), self.rank,
                                self.world_size)
        if self.length is not None:
            indices = itertools.islice(indices, self.length)
        for i in indices:
            yield make_batch(self.seed, i, self.num_gpus, self.ims_per_gpu)


class FakeDataset(torch.utils.data.Dataset):
    """Map-style view of the fake stream, for a real DataLoader with worker processes: item i is
    minibatch i; ``load_sleep`` makes each load slow (the main process then waits in next())."""

    def __init__(self, seed, load_sleep=0.0):
        self.seed, self.load_sleep = seed, load_sleep

    def __len__(self):
        return 1 << 30

    def __getitem__(self, i):
        print('loading %d' % i, flush=True)
        time.sleep(self.load_sleep)
        return make_batch(self.seed, i)


class _StreamFrom:
    """Batch sampler [[start], [start + 1], ...] (one minibatch per item)."""

    def __init__(self, start):
        self.start = start

    def __iter__(self):
        return ([i] for i in itertools.count(self.start))


def worker_loader(seed, start_iter, num_workers, load_sleep):
    return torch.utils.data.DataLoader(FakeDataset(seed, load_sleep),
                                       batch_sampler=_StreamFrom(start_iter),
                                       num_workers=num_workers, collate_fn=_first)


def _first(items):
    return items[0]


class Solver(dict):
    """cfg.SOLVER stand-in (attribute access) with Detectron's defaults."""
    __getattr__ = dict.__getitem__


def solver_cfg(**overrides):
    s = Solver(TYPE='SGD', BASE_LR=0.01, LR_POLICY='steps_with_decay', GAMMA=0.1,
               STEP_SIZE=30000, STEPS=[0, 6, 9], LRS=[], MAX_ITER=12, MOMENTUM=0.9,
               WEIGHT_DECAY=0.0005, WEIGHT_DECAY_GN=0.0, BIAS_DOUBLE_LR=True,
               BIAS_WEIGHT_DECAY=False, WARM_UP_ITERS=4, WARM_UP_FACTOR=1.0 / 3.0,
               WARM_UP_METHOD='linear', SCALE_MOMENTUM=True, SCALE_MOMENTUM_THRESHOLD=1.1,
               LOG_LR_CHANGE_THRESHOLD=1.1)
    s.update(overrides)
    return s


def build(seed=0, solver=None, model_seed=None):
    """(model, optimizer, scheduler) built deterministically."""
    from pydetectron.engine.optimizer import build_optimizer
    from pydetectron.engine.solver import LRScheduler
    solver = solver or solver_cfg()
    torch.manual_seed(seed if model_seed is None else model_seed)
    model = FakeDetector()
    optimizer = build_optimizer(model, solver)
    return model, optimizer, LRScheduler(optimizer, solver)


def main(argv=None):
    """Train the fake model with the real Trainer (subprocess tests).

    --sleep S           sleep S seconds in each forward (gives a signal time to arrive)
    --workers N         read through a torch DataLoader with N worker processes
    --load_sleep S      each worker load takes S seconds
    --distributed       join the torchrun process group (gloo) and use DDP
    --dump PATH         write the final state_dict (per rank: PATH.rank<r>)
    """
    p = argparse.ArgumentParser()
    p.add_argument('--output_dir', default=None)
    p.add_argument('--max_iter', type=int, default=12)
    p.add_argument('--iter_size', type=int, default=1)
    p.add_argument('--snapshot', type=int, default=0)
    p.add_argument('--sleep', type=float, default=0.0)
    p.add_argument('--distributed', action='store_true')
    p.add_argument('--dump', default=None)
    p.add_argument('--resume', default=None)
    p.add_argument('--cuda', action='store_true', help='GPUs (NCCL with --distributed)')
    p.add_argument('--workers', type=int, default=0, help='a real DataLoader with workers')
    p.add_argument('--load_sleep', type=float, default=0.0)
    args = p.parse_args(argv)

    from pydetectron.engine import distributed as dist_utils
    from pydetectron.engine.checkpoint import load_checkpoint, load_model_state
    from pydetectron.engine.interrupt import TrainingInterrupted
    from pydetectron.engine.trainer import Trainer, TrainingDiverged
    from pydetectron.utils.logging import setup_logging
    setup_logging(__name__)
    torch.set_num_threads(1)

    info = dist_utils.init_distributed(use_cuda=args.cuda) if args.distributed else \
        dist_utils.DistInfo(device=torch.device('cuda' if args.cuda else 'cpu'))
    if args.cuda:
        torch.backends.cudnn.deterministic = True
    solver = solver_cfg(MAX_ITER=args.max_iter)
    model, optimizer, scheduler = build(0, solver)
    start_step, data_order, rng = 0, {'seed': 7, 'start_iter': 0}, None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        load_model_state(model, ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        start_step, data_order, rng = ckpt['step'] + 1, ckpt['data_order'], ckpt['rng']
    if args.sleep:
        model.on_forward = lambda i: (print('forward %d' % i, flush=True), time.sleep(args.sleep))
    model.to(info.device)   # in place: the optimizer keeps its parameters
    wrapped = dist_utils.wrap_model(model, info)
    trainer = Trainer(
        wrapped, optimizer, scheduler,
        (lambda start: worker_loader(data_order['seed'], start, args.workers, args.load_sleep))
        if args.workers else
        (lambda start: FakeLoader(seed=data_order['seed'], start_iter=start, rank=info.rank,
                                  world_size=info.world_size)),
        max_iter=solver.MAX_ITER, iter_size=args.iter_size, output_dir=args.output_dir,
        device=info.device,
        snapshot_period=args.snapshot, data_order=data_order, rng_states=rng,
        reduce_values=dist_utils.all_reduce_mean if info.distributed else None,
        is_main_process=info.is_main_process, progress=False)
    code = 0
    try:
        trainer.train(start_step)
    except (TrainingInterrupted, TrainingDiverged) as e:
        print(str(e), file=sys.stderr, flush=True)
        code = e.exit_code
    if args.dump:
        path = args.dump + ('.rank%d' % info.rank if info.distributed else '')
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, path)
    # One write of the whole line: print() writes the text and the newline separately, and the
    # other rank's log lines could land between them on the shared stdout.
    sys.stdout.write('losses ' + ' '.join('%.9g' % v for v in trainer.loss_history) + '\n')
    sys.stdout.flush()
    if info.distributed:
        dist_utils.cleanup()
    return code


if __name__ == '__main__':
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'lib'))
    sys.exit(main())
