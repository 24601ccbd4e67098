"""Paired timing of two or more versions of pydetectron (and torchvision), step by step.

    python dev/benchmark_ab.py --impl base=.bench_base/lib --impl head=lib --peer \\
        --model mask --part train --batch 2 --steps 60

On a shared machine the speed of the host drifts by 10-20% within minutes, more than most single
changes gain, so timing one version after the other (``dev/benchmark.py`` twice) cannot tell
them apart. Here each implementation lives in its own worker process (its own copy of the package
on ``sys.path``: ``PYDETECTRON_LIB``), all of them built and warmed up on the same synthetic
images, and the workers take turns: one timed step of each per round, the order rotating from
round to round, never two at once. Every round gives each implementation's step time under the
same conditions; the report has each one's median and p10-p90, and the median over rounds of the
per-round ratio to the first implementation (the paired speed-up, which the drift cancels out
of) with its quartiles.

A step is what ``dev/benchmark.py`` times: ``--part train``, one optimizer step at ``--batch``
images ending with the host reading the loss (cuDNN autotuning off); ``--part infer``,
``model.detect`` on one image (the images rotating; autotuning on). Times are device-side
(``torch.cuda.Event``) on CUDA, host clock on the CPU. ``--peer`` adds torchvision's model as an
implementation named ``torchvision``.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--impl', action='append', default=[], metavar='NAME=LIBDIR',
                   help='an implementation: a name and the folder holding its pydetectron '
                   'package (repeat; the first is the reference of the ratios)')
    p.add_argument('--options', action='append', default=[], metavar='NAME=ARGS',
                   help="extra arguments for one implementation's worker, e.g. "
                   "fast='--channels_last --compile reduce-overhead' or, commas for spaces, "
                   "fast=--channels_last,--compile,reduce-overhead (the same folder may be "
                   "given twice under two names, with and without options)")
    p.add_argument('--peer', action='store_true', help="also time torchvision's model")
    p.add_argument('--model', default='mask',
                   choices=('mask', 'faster', 'keypoint', 'retinanet'))
    p.add_argument('--part', default='train', choices=('train', 'infer'))
    p.add_argument('--batch', type=int, default=2, help='training images per step')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'))
    p.add_argument('--steps', type=int, default=60, help='timed rounds')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps of each first')
    p.add_argument('--image_size', default='800x1333', help='HEIGHTxWIDTH')
    p.add_argument('--objects', type=int, default=8)
    p.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    p.add_argument('--set', dest='set_cfgs', nargs='+', default=[],
                   help='config KEY VALUE pairs for our models (after the YAML)')
    p.add_argument('--channels_last', action='store_true')
    p.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE')
    p.add_argument('--worker', help=argparse.SUPPRESS)   # internal: NAME of a worker process
    p.add_argument('--data', help=argparse.SUPPRESS)     # internal: the synthetic dataset spec
    args = p.parse_args(argv)
    impls = []
    for spec in args.impl:
        name, sep, lib = spec.partition('=')
        if not sep or not name or not lib:
            p.error('--impl: expected NAME=LIBDIR, got %r' % spec)
        if name == 'torchvision':
            p.error('--impl: the name torchvision is taken by --peer')
        if not args.worker and not os.path.isdir(os.path.join(lib, 'pydetectron')):
            p.error('--impl %s: no pydetectron package in %s' % (name, lib))
        impls.append((name, os.path.abspath(lib)))
    if not args.worker and len(impls) + args.peer < 2:
        p.error('give at least two implementations (--impl twice, or --impl and --peer)')
    if len({n for n, _ in impls}) != len(impls):
        p.error('--impl: the names must differ')
    args.impls = impls
    args.extra = {}
    for spec in args.options:
        name, sep, extra = spec.partition('=')
        if not sep or name not in {n for n, _ in impls}:
            p.error('--options: expected NAME=ARGS with NAME one of the --impl names, got %r'
                    % spec)
        args.extra[name] = extra.replace(',', ' ').split()
    return args


def bench_argv(args):
    """The dev/benchmark.py arguments that configure the models as ours are configured."""
    argv = ['--image_size', args.image_size, '--objects', str(args.objects), '--no-peer']
    if args.device:
        argv += ['--device', args.device]
    if args.set_cfgs:
        argv += ['--set'] + args.set_cfgs
    if args.channels_last:
        argv.append('--channels_last')
    if args.compile:
        argv += ['--compile', args.compile]
    return argv


# ---------------------------------------------------------------------------------------------- #
# Worker: builds one implementation, then times one step per "step" line on stdin
# ---------------------------------------------------------------------------------------------- #

def worker(args):
    import torch
    sys.path.insert(0, os.path.join(ROOT, 'dev'))
    from bench import models, options, timing   # import pydetectron from PYDETECTRON_LIB
    bargs = options.parse_args(bench_argv(args))
    bargs.device = torch.device(bargs.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    device = bargs.device
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peer = args.worker == 'torchvision'
    impl = 'torchvision' if peer else 'ours'
    train = args.part == 'train'
    batch = args.batch if train else 2
    names = models.configure(args.model, args.data, batch, bargs)
    data, im_info, gt = models.load_batch(names, batch, device)
    torch.backends.cudnn.benchmark = not train
    if train:
        if peer:
            model = models.build_peer(args.model, device)
            inputs = models.peer_inputs(data, im_info, gt, args.model)
        else:
            model = models.build_ours(device, bargs.channels_last, bargs.compile)
            inputs = (data, im_info, gt)
        step = timing.train_step_fn(model, impl, inputs, device, args.precision)
    else:
        _, run = timing.inference_runner(args.model, impl, data, im_info, gt, bargs)
        counter = [0]

        def step():   # one image, the two images in turn
            i = counter[0] % 2
            counter[0] += 1
            with torch.no_grad():
                return run(i, i + 1)
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    import pydetectron
    print('ready %s' % os.path.dirname(os.path.dirname(os.path.abspath(pydetectron.__file__))),
          flush=True)
    for line in sys.stdin:
        if line.strip() != 'step':
            break
        print('%.4f' % timing.timed_ms(step, device), flush=True)


# ---------------------------------------------------------------------------------------------- #
# Parent: starts the workers, runs the rounds, reports
# ---------------------------------------------------------------------------------------------- #

def _quantile(xs, f):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * len(xs)))]


def _read_line(proc, name):
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError('worker %s ended early (exit %s); its errors are above'
                           % (name, proc.poll()))
    return line.strip()


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    sys.path.insert(0, os.path.join(ROOT, 'dev'))
    os.environ.setdefault('PYDETECTRON_LIB', args.impls[0][1] if args.impls else '')
    from bench.data import make_synthetic_coco
    h, w = (int(x) for x in args.image_size.lower().split('x'))
    tmp = tempfile.mkdtemp(prefix='pydetectron_ab_')
    procs = []
    try:
        spec = make_synthetic_coco(tmp, 16, h, w, args.objects, args.model == 'keypoint')
        runs = list(args.impls) + ([('torchvision', args.impls[0][1] if args.impls
                                     else os.path.join(ROOT, 'lib'))] if args.peer else [])
        # the workers get the parent's arguments without --options, plus their own options
        given = list(argv if argv is not None else sys.argv[1:])
        base_argv = []
        while given:
            a = given.pop(0)
            if a == '--options':
                given.pop(0)
            elif not a.startswith('--options='):
                base_argv.append(a)
        for name, lib in runs:
            env = dict(os.environ, PYDETECTRON_LIB=lib, PYTHONUNBUFFERED='1')
            env['PYTHONPATH'] = lib + (os.pathsep + env['PYTHONPATH']
                                       if env.get('PYTHONPATH') else '')
            cmd = [sys.executable, os.path.abspath(__file__)] + base_argv + [
                '--worker', name, '--data', spec] + args.extra.get(name, [])
            procs.append((name, subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, text=True)))
            # one at a time: build and warm-up of one worker must not overlap another's
            ready = _read_line(procs[-1][1], name).split(' ', 1)
            if ready[0] != 'ready':
                raise RuntimeError('worker %s did not get ready' % name)
            print('worker %s ready (pydetectron from %s%s)'
                  % (name, ready[1], '; ' + ' '.join(args.extra[name]) if name in args.extra
                     else ''), flush=True)
        times = {name: [] for name, _ in procs}
        for r in range(args.steps):
            k = r % len(procs)
            for name, proc in procs[k:] + procs[:k]:
                proc.stdin.write('step\n')
                proc.stdin.flush()
                times[name].append(float(_read_line(proc, name)))
    finally:
        for _, proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, times)
    return times


def report(args, times):
    names = list(times)
    ref = names[0]
    unit = 'images/s' if args.part == 'train' else 'ms/image'
    per_step = args.batch if args.part == 'train' else 1
    print('\n== paired timing: %s %s, %s%s, %d rounds (one step of each per round)'
          % (args.model, args.part, args.precision,
             ', batch %d' % args.batch if args.part == 'train' else ', batch 1', args.steps))
    peer = 'torchvision' if 'torchvision' in times and ref != 'torchvision' else None
    print('%-14s %10s %10s %10s %10s   %-34s%s'
          % ('impl', 'median ms', 'p10 ms', 'p90 ms', unit,
             'per-round speed vs %s: median [q1, q3]' % ref,
             '   vs torchvision' if peer else ''))

    def paired(a, b):   # per-round speed of b against a (> 1: b is faster): median, q1, q3
        ratios = [x / y for x, y in zip(times[a], times[b])]
        return statistics.median(ratios), _quantile(ratios, 0.25), _quantile(ratios, 0.75)
    for name in names:
        t = times[name]
        med = statistics.median(t)
        rate = per_step / med * 1000. if args.part == 'train' else med
        cols = '%.3fx [%.3f, %.3f]' % paired(ref, name)
        if peer:
            cols = '%-34s   %.3fx [%.3f, %.3f]' % ((cols,) + paired(peer, name))
        print('%-14s %10.1f %10.1f %10.1f %10.1f   %s'
              % (name, med, _quantile(t, 0.1), _quantile(t, 0.9), rate, cols))


if __name__ == '__main__':
    main()
