"""Multi-process training with ``DistributedDataParallel`` under ``torchrun``.

``torchrun --nproc_per_node=N tools/train_net_step.py ...`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK (and the rendezvous address) in their environment. Each process:
  * joins the process group: NCCL when it trains on a GPU (GPU ``LOCAL_RANK``), gloo on the CPU;
  * builds the same model from the same seed, wraps it in DDP (gradients all-reduced and
    averaged at each optimizer step, so every rank applies the same update);
  * reads its own share of the minibatches: the loader's aspect-grouped minibatch sequence is the
    same on every rank (same seed), and rank r takes minibatches r, r + N, r + 2N, ...
    (``shard_batches``), so each minibatch stays aspect-grouped and the shares are disjoint;
  * is treated as one "GPU" of Detectron's NUM_GPUS: the LR is scaled with the total batch
    (N x images per process) exactly as the seed scales it with its batch size
    (``train_setup.adjust_config_for_batch_size`` with ``num_gpus = N``);
  * logs and saves only on rank 0 (``is_main_process``).
"""
import datetime
import itertools
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.utils.data

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    backend: str = ''

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main_process(self):
        return self.rank == 0


def launched_by_torchrun():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def init_distributed(use_cuda=True, timeout_s=1800):
    """Join the process group described by torchrun's environment; a single process (no
    WORLD_SIZE > 1) gets a ``DistInfo`` of world size 1 and no group is created."""
    use_cuda = use_cuda and torch.cuda.is_available()
    if not launched_by_torchrun():
        device = (torch.device('cuda', torch.cuda.current_device()) if use_cuda
                  else torch.device('cpu'))
        return DistInfo(device=device)
    rank = int(os.environ['RANK'])
    world_size = int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError('LOCAL_RANK {} but only {} CUDA devices are visible: start fewer '
                               'processes per node'.format(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
        backend = 'nccl'
    else:
        device = torch.device('cpu')
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method='env://', rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    logger.info('Process group: rank %d / %d, local rank %d, %s on %s', rank, world_size,
                local_rank, backend, device)
    return DistInfo(rank, world_size, local_rank, device, backend)


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values):
    """Average a tensor over all ranks (the identity in a single process)."""
    world_size = get_world_size()
    if world_size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world_size


def broadcast_module_state(module, src=0):
    """Make every rank's parameters and buffers equal to rank ``src``'s (DDP does this for
    parameters when wrapping; useful after loading a checkpoint on one rank only)."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(t.data, src)


def wrap_model(model, info, find_unused_parameters=True):
    """``DistributedDataParallel`` around ``model`` (already on ``info.device``).

    ``find_unused_parameters`` defaults to True: a detection model may leave a head unused in a
    step (no foreground RoI for the mask head, no visible keypoint), which DDP otherwise reports
    as an error at the next step.
    """
    if not info.distributed:
        return model
    kwargs = {}
    if info.device.type == 'cuda':
        kwargs.update(device_ids=[info.device.index], output_device=info.device.index)
    return torch.nn.parallel.DistributedDataParallel(
        model, find_unused_parameters=find_unused_parameters, **kwargs)


def shard_batches(batches, rank, world_size):
    """Rank ``rank``'s share of a minibatch sequence: items rank, rank + N, rank + 2N, ...

    ``batches`` is the same (aspect-grouped) sequence on every rank, e.g. a restartable batch
    sampler's lists of indices; the shares are disjoint and each item stays whole.
    """
    if not 0 <= rank < world_size:
        raise ValueError('rank {} is outside [0, {})'.format(rank, world_size))
    return itertools.islice(batches, rank, None, world_size)


class ShardedBatchSampler:
    """A batch sampler that yields rank ``rank``'s share of ``batch_sampler`` (an iterable of
    index lists, identical on all ranks); ``len`` is the share's length when the sampler has one.
    A restartable sampler stays restartable: restart the wrapped one at
    ``start_iter * world_size`` global minibatches."""

    def __init__(self, batch_sampler, rank, world_size):
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        return shard_batches(iter(self.batch_sampler), self.rank, self.world_size)

    def __len__(self):
        n = len(self.batch_sampler)
        return max(0, (n - self.rank + self.world_size - 1) // self.world_size)


class _RankShareOfMinibatches:
    """Batch sampler yielding per-GPU minibatch ``step * world_size + rank`` of a sampler with
    Detectron's minibatch stream (``roi_data.loader.AspectGroupedBatchSampler``: ``minibatch(k)``
    and ``start_iter``), from its ``start_iter`` on: the minibatches a single process with
    ``world_size`` GPUs would give GPU ``rank``."""

    def __init__(self, sampler, rank, world_size):
        if not (hasattr(sampler, 'minibatch') and hasattr(sampler, 'start_iter')):
            raise TypeError('shard_train_loader needs a batch sampler with minibatch(k) and '
                            'start_iter (roi_data.loader.AspectGroupedBatchSampler), got {}'
                            .format(type(sampler).__name__))
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self):
        step = self.sampler.start_iter
        while True:
            yield self.sampler.minibatch(step * self.world_size + self.rank)
            step += 1


def shard_train_loader(loader, rank, world_size):
    """A DataLoader like ``loader`` (built for one GPU, restartable at ``start_iter``) reading
    rank ``rank``'s share of the training stream (see the module docstring)."""
    return type(loader)(
        loader.dataset, batch_sampler=_RankShareOfMinibatches(loader.batch_sampler, rank,
                                                              world_size),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, multiprocessing_context=loader.multiprocessing_context)


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
