"""DistributedDataParallel under torchrun (2 CPU processes, gloo): both ranks end with identical
weights; only rank 0 writes checkpoints; the minibatch sharding keeps minibatches whole and
disjoint."""
import os
import subprocess
import sys

import pytest
import torch

from pydetectron.engine import checkpoint as ck
from pydetectron.engine.distributed import (ShardedBatchSampler, all_reduce_mean, shard_batches,
                                            shard_train_loader)

from _engine_fakes import build

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.normpath(os.path.join(HERE, '..', '..', 'lib'))


def test_shard_batches_disjoint_whole_and_restartable():
    batches = [[i, i + 100] for i in range(10)]            # e.g. aspect-grouped index pairs
    r0 = list(shard_batches(iter(batches), 0, 2))
    r1 = list(shard_batches(iter(batches), 1, 2))
    assert r0 == batches[0::2] and r1 == batches[1::2]
    assert not set(map(tuple, r0)) & set(map(tuple, r1))
    # restarting the global sequence at start_iter * world_size continues each rank's share
    assert list(shard_batches(iter(batches[2 * 2:]), 1, 2)) == r1[2:]
    s = ShardedBatchSampler(batches, 1, 3)
    assert list(s) == batches[1::3] and len(s) == 3
    with pytest.raises(ValueError, match='rank 2 is outside'):
        list(shard_batches(iter(batches), 2, 2))
    v = torch.tensor([1.0, 2.0])
    assert all_reduce_mean(v) is v                         # single process: identity


def test_rank_shares_of_the_aspect_grouped_stream():
    """Under torchrun, rank r reads exactly the per-GPU minibatches a single process with N GPUs
    gives GPU r (aspect-grouped, same scales), and restarts at a step like the loader does."""
    import numpy as np
    from pydetectron.roi_data.loader import AspectGroupedBatchSampler
    ratio_list = np.array([0.5] * 7 + [2.0] * 9)
    ratio_index = np.arange(16)

    def sampler(num_gpus, start_iter=0):
        return AspectGroupedBatchSampler(ratio_list, ratio_index, images_per_gpu=2,
                                         num_gpus=num_gpus, scales=(600, 800), seed=3,
                                         start_iter=start_iter)

    class Identity(torch.utils.data.Dataset):
        def __getitem__(self, item):
            return item

        def __len__(self):
            return 16

    single = sampler(2)
    for start in (0, 5):
        loaders = [shard_train_loader(torch.utils.data.DataLoader(
            Identity(), batch_sampler=sampler(1, start), collate_fn=list), rank, 2)
            for rank in range(2)]
        iters = [iter(loader) for loader in loaders]
        for step in range(start, start + 12):           # more than one epoch (7 + 4 / 2 GPUs)
            items = single.batch(step)
            for rank in range(2):
                got = next(iters[rank])
                assert got == items[2 * rank:2 * rank + 2], (start, step, rank)
                ratios = {ratio_list[i] >= 1 for i, _, _ in got}
                assert len(ratios) == 1                  # one orientation per minibatch
    with pytest.raises(TypeError, match='minibatch'):
        shard_train_loader(torch.utils.data.DataLoader(Identity(), batch_size=2), 0, 2)


def torchrun_fake_training(tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LIB, HERE]), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(HERE, '_engine_fakes.py'), '--distributed', '--max_iter', '6',
           '--snapshot', '3', '--output_dir', str(tmp_path), '--dump', str(tmp_path / 'final.pth')]
    return subprocess.run(cmd + list(extra), env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('backend', [
    'gloo', pytest.param('nccl', marks=pytest.mark.cuda)])
def test_torchrun_two_processes_identical_weights(tmp_path, backend):
    if backend == 'nccl' and torch.cuda.device_count() < 2:
        pytest.skip('NCCL run needs 2 GPUs')
    proc = torchrun_fake_training(tmp_path, *(['--cuda'] if backend == 'nccl' else []))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / 'final.pth.rank0', weights_only=True)
    r1 = torch.load(tmp_path / 'final.pth.rank1', weights_only=True)
    init = build(0)[0].state_dict()
    changed = 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        changed += not torch.equal(r0[k], init[k])
    assert changed >= 5                                    # it trained
    # rank 0 alone saved, at the snapshot and the end
    assert [s for s, _ in ck.list_checkpoints(str(tmp_path))] == [2, 5]
    final = ck.load_checkpoint(ck.find_latest_checkpoint(str(tmp_path)))
    for k in r0:
        assert torch.equal(final['model'][k], r0[k]), k
    # both ranks log the same (all-reduced) losses
    lines = [l for l in proc.stdout.splitlines() if l.startswith('losses')]
    assert len(lines) == 2 and lines[0] == lines[1]
    assert all(v == v for v in map(float, lines[0].split()[1:]))
