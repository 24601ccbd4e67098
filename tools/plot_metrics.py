"""Draw the loss and AP curves of a training run's ``metrics.jsonl`` into PNG files.

    python tools/plot_metrics.py Outputs/my_run                 -> Outputs/my_run/loss.png, ap.png
    python tools/plot_metrics.py Outputs/my_run/metrics.jsonl --out_dir plots

``loss.png``: the total loss and each loss (FPN's per-level RPN losses summed) at every logged
step (the step's own value: ``--disp_interval`` sets how many points there are), with a moving
median (``--smooth``, in points) drawn over it. ``ap.png``: every evaluation's AP, AP50, AP75 per
dataset and task (VOC's mAP is its AP50); written only when the run evaluated (``--eval_period``,
or the test after training).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

import matplotlib  # noqa: E402
matplotlib.use('Agg')  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot the loss and AP curves of a run')
    parser.add_argument('run', help='a run folder (--output_dir of train_net_step.py) or its '
                        'metrics.jsonl')
    parser.add_argument('--out_dir', help='where loss.png and ap.png go (default: beside '
                        'metrics.jsonl)')
    parser.add_argument('--smooth', type=int, default=20,
                        help='points in the moving median over the losses (1: none)')
    return parser.parse_args(argv)


def moving_median(values, window):
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    return np.array([np.median(values[max(0, i - window + 1):i + 1])
                     for i in range(len(values))])


def plot_losses(losses, path, smooth):
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in ['loss'] + sorted(k for k in losses if k != 'loss'):
        if name not in losses:
            continue
        xs, ys = losses[name]
        line, = ax.plot(xs, ys, alpha=0.3, linewidth=0.8)
        ax.plot(xs, moving_median(ys, smooth), color=line.get_color(), linewidth=1.6,
                label=name)
    ax.set_yscale('log')
    _finish(fig, ax, 'loss', path)


def _finish(fig, ax, ylabel, path):
    """Axis labels, grid and legend of both plots; the figure written to ``path``."""
    ax.set_xlabel('iteration')
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_evals(evals, path):
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in sorted(evals):
        xs, ys = evals[name]
        ax.plot(xs, ys, marker='o', label=name)
    _finish(fig, ax, 'AP', path)


def main(argv=None):
    from pydetectron.engine import run_folder
    args = parse_args(argv)
    path = args.run
    if os.path.isdir(path):
        path = os.path.join(path, run_folder.METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError('%s not found (give a run folder or its metrics.jsonl)' % path)
    losses, evals = run_folder.curves(run_folder.read_metrics(path))
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if losses:
        written.append(os.path.join(out_dir, 'loss.png'))
        plot_losses(losses, written[-1], args.smooth)
    if evals:
        written.append(os.path.join(out_dir, 'ap.png'))
        plot_evals(evals, written[-1])
    if not written:
        print('%s has no train or eval records: nothing to draw' % path)
    for w in written:
        print('wrote %s' % w)
    return 0


if __name__ == '__main__':
    from pydetectron.engine.cli import run_tool
    sys.exit(run_tool(main, prog='plot_metrics.py'))
