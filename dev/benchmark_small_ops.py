"""Small CPU op calls with several threads: the case that `grain_for` in ops/csrc/common/common.h
keeps on one thread (a call under ~1 M multiply-adds). Run it on a machine shared with other jobs
to see the difference that waking OpenMP threads makes.

    python dev/benchmark_small_ops.py [--lib LIB] [--threads 2] [--calls 300]
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--lib', default=os.path.join(ROOT, 'lib'), help='the package folder to time')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--calls', type=int, default=300)
    args = p.parse_args(argv)
    sys.path.insert(0, args.lib)
    import torch
    from pydetectron.ops import roi_align, roi_pool
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    feat = torch.randn(1, 64, 20, 20)
    rois = torch.tensor([[0, 1., 1., 9., 9.]] * 8)
    grad_feat = feat.clone().requires_grad_()
    cases = [
        ('roi_align, 8 RoIs, 64 channels, 7x7', lambda: roi_align(feat, rois, (7, 7), 1.0, 2)),
        ('roi_pool, 8 RoIs, 64 channels, 7x7', lambda: roi_pool(feat, rois, (7, 7), 1.0)),
        ('roi_align forward + backward', lambda: roi_align(grad_feat, rois, (7, 7), 1.0, 2).sum().backward()),
    ]
    print('threads %d, %d calls each, load average %s' % (
        args.threads, args.calls, ' '.join(open('/proc/loadavg').read().split()[:3])))
    for name, fn in cases:
        for _ in range(20):
            fn()
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        print('%-40s median %8.3f ms   p90 %8.3f ms' % (
            name, statistics.median(times), times[int(0.9 * len(times))]))


if __name__ == '__main__':
    main()
