"""Logging helpers: median-smoothed values, the training console format, JSON stats lines.

The console format is the seed's (Detectron.pytorch ``log_stats``)::

    [run_name][cfg_filename][Step 20 / 90000]
            loss: 1.234567, lr: 0.006667 time: 0.512345, eta: 12:47:25
            accuracy_cls: 0.912345
            loss_bbox: 0.112345, loss_cls: 0.312345, loss_mask: 0.512345
            loss_rpn_bbox: 0.012345, loss_rpn_cls: 0.045678
            loss_rpn_cls_fpn2: ..., loss_rpn_cls_fpn3: ...
            loss_rpn_bbox_fpn2: ..., loss_rpn_bbox_fpn3: ...

A group line is printed when the group has values (the seed keyed the RPN lines on
``cfg.RPN.RPN_ON`` / ``cfg.FPN.FPN_ON``; ``utils`` never imports the config, and an empty group
means exactly "that part is off").
"""
import json
import logging
import sys
from collections import deque

import numpy as np


class SmoothedValue:
    """A series of values smoothed over a window (median or mean) plus the global average.

    Unlike Detectron's, it keeps no full history: a long run's memory stays flat.
    """

    def __init__(self, window_size):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def AddValue(self, value):
        value = float(value)
        self.deque.append(value)
        self.count += 1
        self.total += value

    def GetMedianValue(self):
        return float(np.median(self.deque)) if self.deque else float('nan')

    def GetAverageValue(self):
        return float(np.mean(self.deque)) if self.deque else float('nan')

    def GetGlobalAverageValue(self):
        return self.total / self.count if self.count else float('nan')


def log_json_stats(stats, sort_keys=True, write=print):
    """Detectron's machine-readable line: ``json_stats: {...}``."""
    def _plain(v):
        if isinstance(v, dict):
            return {k: _plain(x) for k, x in v.items()}
        if isinstance(v, float):
            return float('{:.6f}'.format(v))
        return v
    write('json_stats: {:s}'.format(json.dumps(_plain(stats), sort_keys=sort_keys)))


def _group_line(values):
    return '\t\t' + ', '.join('%s: %.6f' % (k, v) for k, v in values.items())


def format_stats(stats, run_name, cfg_filename, max_iter):
    """The seed's console block for one log step (``stats`` as built by ``TrainingStats``)."""
    lines = ['[%s][%s][Step %d / %d]' % (run_name, cfg_filename, stats['iter'], max_iter)]
    first = '\t\tloss: %.6f, lr: %.6f time: %.6f, eta: %s' % (
        stats['loss'], stats['lr'], stats['time'], stats['eta'])
    if stats.get('mem') is not None:
        first += ', mem: %dMB' % stats['mem']
    lines.append(first)
    for group in ('metrics', 'head_losses', 'rpn_losses', 'rpn_fpn_cls_losses',
                  'rpn_fpn_bbox_losses'):
        if stats.get(group):
            lines.append(_group_line(stats[group]))
    return '\n'.join(lines)


def log_stats(stats, misc_args, max_iter, write=print):
    """Print ``format_stats`` for ``misc_args.run_name`` / ``misc_args.cfg_filename``."""
    write(format_stats(stats, misc_args.run_name, misc_args.cfg_filename, max_iter))


def setup_logging(name, level=logging.INFO):
    """Root logging to stdout in Detectron's format; returns the logger called ``name``."""
    fmt = '%(levelname)s %(filename)s:%(lineno)4d: %(message)s'
    # Clear handlers that an imported module's basicConfig may have installed, so ours apply.
    logging.root.handlers = []
    logging.basicConfig(level=level, format=fmt, stream=sys.stdout)
    return logging.getLogger(name)
