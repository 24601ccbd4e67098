"""The training data loader's throughput (``pydetectron.roi_data.loader``, as training builds it):
images per second of wall time and per CPU-second of the processes that make the batches."""
import os
import time
import types

from bench.models import configure
from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.roi_data.loader import build_train_loader


def _cpu_seconds(pids):
    """User + system CPU time of processes (Linux /proc), or None where unavailable."""
    total = 0.
    try:
        for pid in pids:
            with open('/proc/%d/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / float(os.sysconf('SC_CLK_TCK'))
    except (OSError, ValueError, IndexError):
        return None
    return total


def time_loader(roidb, ratio_list, ratio_index, args, num_workers):
    """(images/s of wall time, images per CPU-second of the processes making batches, shape)."""
    loader = build_train_loader(roidb, ratio_list, ratio_index, args.batch_size, args.num_gpus,
                                num_workers, start_iter=0)
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    # the processes that make batches: the workers, or this one with num_workers=0
    pids = [w.pid for w in getattr(it, '_workers', [])] or [os.getpid()]
    cpu0, start = _cpu_seconds(pids), time.perf_counter()
    for _ in range(args.iters):
        batch = next(it)
    elapsed = time.perf_counter() - start
    cpu1 = _cpu_seconds(pids)
    shape = tuple(batch['data'][0].shape)
    del batch, it
    images = args.iters * args.batch_size
    per_cpu = images / (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None and cpu1 > cpu0 \
        else float('nan')
    return images / elapsed, per_cpu, shape


def measure_loader(dataset_spec, model_name, args):
    """images/s of the training loader for each worker count, on ``model_name``'s config
    (``time_loader``, as ``dev/benchmark_loader.py`` times it)."""
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
