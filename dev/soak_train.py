"""Soak test: does resident memory stay flat over a long CPU training run?

Runs ``tools/train_net_step.py`` (unchanged, in this process) on the shapes dataset with the quick
start's thin GN R-FPN Mask R-CNN, records the resident set size (RSS, from /proc, this process
plus its DataLoader workers) after every step, and reports the growth after warm-up:

    python dev/soak_train.py --steps 300 --warmup 50 --json soak.json
    python dev/soak_train.py --steps 40 --warmup 15 --nw 1 -- --set TRAIN.SCALES '(96,)'

Arguments after ``--`` go to ``train_net_step.py``. The figure for BENCHMARK.md is
``growth_after_warmup_mib``: RSS at the last step minus the median RSS of the ten steps after
warm-up (a median, so one transient allocation at the start of the window does not hide growth).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'lib'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')


def rss_mib(pid):
    """Resident set size of ``pid`` in MiB (Linux /proc); 0 when the process is gone."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def children_of(pid):
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def total_rss_mib():
    """This process and its child processes (DataLoader workers)."""
    me = os.getpid()
    return rss_mib(me) + sum(rss_mib(c) for c in children_of(me))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=300, help='training steps')
    parser.add_argument('--warmup', type=int, default=50,
                        help='steps excluded from the growth figure (allocator, caches)')
    parser.add_argument('--cfg', default=THIN_CFG, help='config (default: the thin shapes one)')
    parser.add_argument('--scale', type=int, default=96, help='TRAIN.SCALES')
    parser.add_argument('--nw', type=int, default=1, help='DataLoader workers')
    parser.add_argument('--json', help='write the RSS series and summary here')
    parser.add_argument('train_args', nargs='*', help='more train_net_step.py arguments')
    return parser.parse_args(argv)


def soak(args):
    import torch
    import train_net_step
    from pydetectron.engine import trainer as trainer_mod

    series = []
    run_step = trainer_mod.Trainer._run_step

    def measured_run_step(self, step):
        finished = run_step(self, step)
        if finished:
            series.append(total_rss_mib())
        return finished

    trainer_mod.Trainer._run_step = measured_run_step
    out_dir = tempfile.mkdtemp(prefix='soak_')
    # --bs 1 doubles the config's schedule (batch 2 -> 1), so MAX_ITER is half the steps.
    argv = ['--dataset', 'shapes', '--cfg', args.cfg, '--no_cuda', '--bs', '1',
            '--nw', str(args.nw), '--disp_interval', '50', '--seed', '1', '--no_save',
            '--skip-test', '--output_dir', out_dir,
            '--set', 'SOLVER.MAX_ITER', str((args.steps + 1) // 2),
            'SOLVER.STEPS', '[0]', 'TRAIN.SCALES', '(%d,)' % args.scale,
            'TRAIN.MAX_SIZE', str(2 * args.scale)] + list(args.train_args)
    code = train_net_step.main(argv)
    if code != 0:
        raise SystemExit('training failed with exit code %d' % code)
    if len(series) <= args.warmup + 10:
        raise SystemExit('only %d steps recorded: need more than --warmup + 10' % len(series))
    base = statistics.median(series[args.warmup:args.warmup + 10])
    after = series[args.warmup:]
    summary = {
        'steps': len(series), 'warmup': args.warmup,
        'rss_after_warmup_mib': round(base, 1), 'rss_last_mib': round(series[-1], 1),
        'rss_max_after_warmup_mib': round(max(after), 1),
        'growth_after_warmup_mib': round(series[-1] - base, 1),
        'rss_first_step_mib': round(series[0], 1),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': '%s, %d CPUs, torch %s, %s threads' % (
            platform.processor() or platform.machine(), os.cpu_count(), torch.__version__,
            torch.get_num_threads()),
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    }
    return summary, series


def main(argv=None):
    args = parse_args(argv)
    summary, series = soak(args)
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'summary': summary, 'rss_mib': series}, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
