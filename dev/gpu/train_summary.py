"""The summary of the GPU training check (dev/gpu/train.sh): each run's exit status, steps, step
time and memory, the loss curves side by side, and test_net's result.

    RUNS="mask_fp32 mask_bf16 ..." python dev/gpu/train_summary.py WORK OUT
"""
import os
import re
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def main(work, out):
    runs = os.environ['RUNS'].split()
    curves, rows = {}, []
    for run in runs:
        log = read(os.path.join(work, 'train_%s.log' % run))
        steps = [int(s) for s in re.findall(r'\[Step (\d+) / \d+\]', log)]
        stats = re.findall(r'loss: ([-\d.naninf]+), lr: [\d.e-]+ time: ([\d.]+)', log)
        mems = re.findall(r'mem: (\d+)', log)
        curves[run] = dict(zip(steps, (float(loss) for loss, _ in stats)))
        rc = read(os.path.join(work, 'rc_%s' % run)).strip() or '-'
        last_time = float(stats[-1][1]) if stats else float('nan')
        rows.append((run, rc, max(steps) if steps else 0, last_time, mems[-1] if mems else '-'))
    print('training (tools/train_net_step.py, 2 images per batch, median-smoothed total loss):')
    print('   %-15s %4s %6s %10s %8s' % ('run', 'rc', 'steps', 's/step', 'MiB'))
    for run, rc, n, t, mem in rows:
        print('   %-15s %4s %6d %10.3f %8s' % (run, rc, n, t, mem))
    all_steps = sorted(set().union(*[set(c) for c in curves.values()]))
    print('   %6s %s' % ('step', ''.join('%15s' % r for r in runs)))
    for s in all_steps:
        print('   %6d %s' % (s, ''.join('%15s' % ('%.4f' % curves[r][s] if s in curves[r] else '-')
                                       for r in runs)))
    print(read(os.path.join(work, 'test_net.txt')).strip())
    for line in read(os.path.join(out, 'test_net.log')).splitlines():
        if re.search(r'copypaste: (Task: \w+|[\d.,]+)$|Error|error:', line):
            print('   ' + line.strip()[-150:])


if __name__ == '__main__':
    main(*sys.argv[1:3])
