"""Training statistics: median-smoothed losses and metrics, console lines, TensorBoard scalars.

The seed's ``TrainingStats`` (Detectron.pytorch ``lib/utils/training_stats.py``, itself from
Detectron): every value is smoothed with a median over the last ``WIN_SZ`` = 20 steps; with
``iter_size`` > 1 a step's value is the mean over its forward passes; with FPN the per-level RPN
losses are also summed into ``loss_rpn_cls`` / ``loss_rpn_bbox``. A log block is written every
``log_period`` steps and at the last step, ``iter`` 1-indexed, eta from the mean step time.
On those steps ``on_log(cur_iter, lr, stats, step_values)`` (when set) also gets the step's own,
unsmoothed values (the run folder's ``metrics.jsonl``).
"""
import datetime
from collections import OrderedDict, defaultdict

import torch

from pydetectron.utils.logging import SmoothedValue, format_stats
from pydetectron.utils.timer import Timer


def _loss_group(name):
    """'head_losses' (loss_cls), 'rpn_losses' (loss_rpn_cls), 'rpn_fpn_cls_losses'
    (loss_rpn_cls_fpn2), 'rpn_fpn_bbox_losses' (loss_rpn_bbox_fpn2)."""
    toks = name.split('_')
    if len(toks) == 3 and toks[1] == 'rpn':
        return 'rpn_losses'
    if len(toks) == 4 and toks[1] == 'rpn' and toks[3].startswith('fpn'):
        return 'rpn_fpn_cls_losses' if toks[2] == 'cls' else 'rpn_fpn_bbox_losses'
    return 'head_losses'


class TrainingStats:
    """Track, smooth and log the vital statistics of a training run."""

    WIN_SZ = 20

    def __init__(self, run_name, cfg_filename, max_iter, log_period=20, iter_size=1,
                 tb_logger=None, write=print, device=None):
        self.run_name = run_name
        self.cfg_filename = cfg_filename
        self.max_iter = max_iter
        self.LOG_PERIOD = max(1, int(log_period))
        self.iter_size = iter_size
        self.tblogger = tb_logger
        self.write = write
        self.device = torch.device(device) if device is not None else None
        self.tb_ignored_keys = ('iter', 'eta')
        self.iter_timer = Timer()
        self.smoothed_losses = defaultdict(lambda: SmoothedValue(self.WIN_SZ))
        self.smoothed_metrics = defaultdict(lambda: SmoothedValue(self.WIN_SZ))
        self.smoothed_total_loss = SmoothedValue(self.WIN_SZ)
        self._inner = []   # per forward pass of the current step: (losses, metrics)
        self.on_log = None
        self.last_step_values = {}   # the last step's losses and metrics, not smoothed

    def IterTic(self):
        self.iter_timer.tic()

    def IterToc(self):
        return self.iter_timer.toc(average=False)

    def ResetIterTimer(self):
        self.iter_timer.reset()

    def UpdateIterStats(self, losses, metrics, inner_iter=0):
        """Record one forward pass's values (``{name: float}``); with ``iter_size`` passes per
        step, the step's values (their means) enter the smoothing window after the last one."""
        self._inner.append((dict(losses), dict(metrics)))
        if inner_iter < self.iter_size - 1:
            return
        passes, self._inner = self._inner, []
        n = len(passes)
        loss_names = list(passes[0][0])
        step_losses = {k: sum(p[0][k] for p in passes) / n for k in loss_names}
        step_metrics = {k: sum(p[1][k] for p in passes) / n for k in passes[0][1]}
        for k, v in step_losses.items():
            self.smoothed_losses[k].AddValue(v)
        fpn_cls = [v for k, v in step_losses.items() if _loss_group(k) == 'rpn_fpn_cls_losses']
        fpn_bbox = [v for k, v in step_losses.items() if _loss_group(k) == 'rpn_fpn_bbox_losses']
        if fpn_cls:
            self.smoothed_losses['loss_rpn_cls'].AddValue(sum(fpn_cls))
        if fpn_bbox:
            self.smoothed_losses['loss_rpn_bbox'].AddValue(sum(fpn_bbox))
        self.smoothed_total_loss.AddValue(sum(step_losses.values()))
        self.last_step_values = dict(step_losses, **step_metrics)
        self.last_step_values['loss'] = sum(step_losses.values())
        for k, v in step_metrics.items():
            self.smoothed_metrics[k].AddValue(v)

    def GetStats(self, cur_iter, lr):
        eta_seconds = self.iter_timer.average_time * (self.max_iter - cur_iter)
        stats = OrderedDict(
            iter=cur_iter + 1,  # 1-indexed, as the seed prints it
            time=self.iter_timer.average_time,
            eta=str(datetime.timedelta(seconds=int(eta_seconds))),
            loss=self.smoothed_total_loss.GetMedianValue(),
            lr=float(lr),
        )
        if self.device is not None and self.device.type == 'cuda':
            stats['mem'] = int(torch.cuda.max_memory_allocated(self.device) / 1024 / 1024 + 0.5)
        stats['metrics'] = OrderedDict(
            (k, self.smoothed_metrics[k].GetMedianValue()) for k in sorted(self.smoothed_metrics))
        for group in ('head_losses', 'rpn_losses', 'rpn_fpn_cls_losses', 'rpn_fpn_bbox_losses'):
            stats[group] = OrderedDict()
        for k in sorted(self.smoothed_losses):
            stats[_loss_group(k)][k] = self.smoothed_losses[k].GetMedianValue()
        return stats

    def should_log(self, cur_iter):
        return cur_iter % self.LOG_PERIOD == 0 or cur_iter == self.max_iter - 1

    def LogIterStats(self, cur_iter, lr):
        """Write the console block (and TensorBoard scalars) on log steps; returns the stats or
        None."""
        if not self.should_log(cur_iter):
            return None
        stats = self.GetStats(cur_iter, lr)
        self.write(format_stats(stats, self.run_name, self.cfg_filename, self.max_iter))
        if self.tblogger is not None:
            self.tb_log_stats(stats, cur_iter)
        if self.on_log is not None:
            self.on_log(cur_iter, lr, stats, self.last_step_values)
        return stats

    def tb_log_stats(self, stats, cur_iter):
        for k, v in stats.items():
            if k in self.tb_ignored_keys:
                continue
            if isinstance(v, dict):
                self.tb_log_stats(v, cur_iter)
            else:
                self.tblogger.add_scalar(k, v, cur_iter)
