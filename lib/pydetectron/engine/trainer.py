"""The training loop: iterations, gradient accumulation, AMP, checkpoints, NaN and signal stops.

One *step* is one optimizer update (the seed's ``train_net_step.py`` loop, 0-indexed):

    for step in [start_step, max_iter):
        iter_size times: next minibatch -> model(data, im_info, roidb) under autocast
                         -> {'losses': {...}, 'metrics': {...}} -> check finite -> backward
                         (one process and no validity flag: backward queued first, the
                         values read while the device runs it; backward changes no weight)
        LR of this step (lr_policy + momentum correction, ``solver.py``) -> optimizer.step()
        stats; checkpoint every ``snapshot_period`` steps and after the last step

Gradient accumulation (``iter_size``): the ``iter_size`` forward / backward passes **sum** their
gradients (each pass back-propagates its own total loss, nothing is divided), then the
optimizer steps once, as in the seed (and Caffe's iter_size). The seed therefore scales the LR
with the per-pass batch size, not with ``iter_size`` (``train_setup.py``): k summed minibatch-mean
gradients at lr equal one mean gradient over the k-times-larger batch at k * lr, Detectron's
linear scaling rule. (Weight decay is applied once per step, at the per-pass LR.)

Invalid minibatches (``KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH``): Detectron's loader
(``roi_data/loader.py``, ``get_next_minibatch``) builds a minibatch, and when it is not valid --
a keypoint model trained on precomputed proposals whose sampled keypoint RoIs hold no more
visible keypoints than the key (``finalize_keypoint_minibatch``) -- draws the next one in its
place; the invalid one never reaches the network. Here the targets are computed in the model, so
the model says so in its output (``'minibatch_valid'``, 0 or 1; absent means valid) and the
trainer does what the loader did:
  * the pass is dropped before its backward: no gradient, no loss in the statistics or the
    loss history, nothing in the step's iter_size count; the next minibatch is drawn instead;
  * the step counter (and with it the LR schedule and the checkpoint names) counts updates
    only, as Detectron's iteration counter does;
  * the data order counts the dropped minibatch as consumed (``data_order['start_iter']``), and
    the random draws it made stay drawn, so ``--resume`` continues exactly where an
    uninterrupted run would;
  * with several devices (DataParallel) or ranks (DDP) the whole pass is dropped when any of its
    minibatches is invalid (Detectron redraws per GPU; the gradients of one pass must come from
    every device here, and all ranks must take the same decision);
  * ``invalid_minibatches`` counts them (debug log per drop); ``MAX_CONSECUTIVE_INVALID`` in a
    row stop training with a ConfigError naming the key, where Detectron would draw forever.
Detectron's end-to-end models (with an RPN) never drop a minibatch: their proposal-labelling op
computes the same count and ignores it, so those models return no flag (and the config warns
when the key is set there, ``core/config.py``).

Stopping early, always at a step boundary (the model and optimizer are only changed by
``optimizer.step()``, which is the last thing a step does):
  * a NaN / inf loss: the step's update never runs; the state after the previous step is saved
    and ``TrainingDiverged`` names the loss and the step;
  * SIGINT / SIGTERM (``interrupt.py``): the flag is looked at after each forward pass; before the
    last pass's update the step is abandoned, after it the step finishes; the last finished step
    is saved and ``TrainingInterrupted`` carries the exit code (128 + signal).
The RNG states and the number of minibatches consumed are recorded at the end of every step, so a
checkpoint written when stopping holds exactly the state an uninterrupted run had after that
step: ``--resume`` continues with the same weights, optimizer state, LR, data order and random
streams.

Under ``DistributedDataParallel`` every rank runs this loop; the per-pass vector of loss values
and the stop flag are averaged across ranks before anyone looks at them, so all ranks take the
same decisions (a rank stopping alone would hang the others in the next all-reduce); only the
main process logs and saves.
"""
import contextlib
import logging
import math
import re
import signal
import sys

import torch

from pydetectron.engine.checkpoint import (get_rng_states, model_generators, save_checkpoint,
                                           set_rng_states)
from pydetectron.engine.interrupt import GracefulInterrupt, TrainingInterrupted
from pydetectron.utils.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Invalid minibatches in a row after which training stops with a ConfigError (Detectron's loader
# would redraw forever)
MAX_CONSECUTIVE_INVALID = 1000

# How DataLoader reports a worker that died of a signal (torch/utils/data/_utils/signal_handling)
_WORKER_KILLED_RE = re.compile(r'DataLoader worker \(pid[^:]*is killed by signal: (\w+)')
_SIGNAL_BY_DESCRIPTION = {'Terminated': signal.SIGTERM, 'Interrupt': signal.SIGINT}


def worker_killed_by_stop_signal(exc):
    """SIGTERM / SIGINT if ``exc`` is the DataLoader's error for a worker killed by one, else
    None (a worker of another loader, started before its signals were ignored, may die with the
    group)."""
    m = _WORKER_KILLED_RE.search(str(exc)) if isinstance(exc, RuntimeError) else None
    return _SIGNAL_BY_DESCRIPTION.get(m.group(1)) if m else None
from pydetectron.nn.data_parallel import DataParallel, scatter_minibatches

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the last good state was saved."""

    def __init__(self, loss_name, value, step, checkpoint=None):
        self.loss_name = loss_name
        self.value = value
        self.step = step
        self.checkpoint = checkpoint
        if checkpoint:
            kept = 'saved the last good state (step {}) to {}'.format(step - 1, checkpoint)
        elif step > 0:
            kept = 'the last good state (step {}) was not saved (saving is off)'.format(step - 1)
        else:
            kept = 'no step had finished; nothing saved'
        super().__init__('Loss {} is {} at step {}: training stopped; {}'.format(
            loss_name, value, step, kept))

    exit_code = 3


class _HostCopy:
    """A 1-D tensor's values on the host: its copy is queued now (to pinned memory, behind the
    work that produces it) and waited for in ``result``, so that the host can queue more work
    (the backward pass) in between instead of waiting for the device first."""

    def __init__(self, values):
        self.event = None
        if values.device.type == 'cuda':
            self.host = values.to('cpu', non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(values.device))
        else:
            self.host = values

    def result(self):
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def _model_outputs(out):
    """Check the training-mode output contract; returns (losses, metrics) dicts."""
    if not isinstance(out, dict) or not isinstance(out.get('losses'), dict) or not out['losses']:
        keys = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise RuntimeError(
            "The model returned no losses in training mode (expected {{'losses': {{name: scalar "
            "tensor}}, 'metrics': {{...}}}}, got {}). Is the model in train() mode, and are its "
            "training targets and losses implemented?".format(keys))
    losses = out['losses']
    for k, v in losses.items():
        if not torch.is_tensor(v) or v.numel() != 1:
            raise RuntimeError('Loss {!r} must be a scalar tensor, got {}'.format(
                k, tuple(v.shape) if torch.is_tensor(v) else type(v).__name__))
    metrics = {k: v for k, v in (out.get('metrics') or {}).items()}
    return losses, metrics


class Trainer:
    """Runs steps ``[start_step, max_iter)`` (see the module docstring).

    Args:
        model: a ``DataParallel`` (takes the loader's per-device lists as they are), or a plain
            module / ``DistributedDataParallel`` on ``device`` (each list must hold one entry).
        optimizer, scheduler: from ``optimizer.build_optimizer`` and ``solver.LRScheduler``.
        make_data_loader: ``start_iter -> iterable`` of loader batches, starting after
            ``start_iter`` minibatches (the loader's restartable sampler).
        max_iter: ``SOLVER.MAX_ITER``. iter_size: forward / backward passes per step.
        output_dir: where ``ckpt/`` goes; None disables saving (``--no_save``).
        snapshot_period: steps between checkpoints (``TRAIN.SNAPSHOT_ITERS / NUM_GPUS``).
        device: the model's device (inputs of a non-DataParallel model are moved there).
        amp: bfloat16 autocast around the forward pass.
        stats: a ``TrainingStats`` (None: no console statistics).
        data_order: {'seed': ..., 'start_iter': minibatches consumed before ``start_step``}.
        rng_states: RNG states to restore once the data iterator exists (resume), or None.
        checkpoint_extra: plain entries added to every checkpoint (cfg, train_size, ...).
        reduce_values: ``tensor -> tensor`` averaging a 1-D float tensor over ranks (DDP).
        is_main_process: only the main process saves.
        cpu_keywords: inputs that stay on the CPU.
        progress: show a tqdm bar (default: when stderr is a terminal).
        after_step: ``(model, step) -> None`` called after each finished step, before its
            checkpoint (the periodic evaluation, ``evaluation.py``).
    """

    def __init__(self, model, optimizer, scheduler, make_data_loader, *, max_iter, iter_size=1,
                 output_dir=None, snapshot_period=None, device=None, amp=False, stats=None,
                 data_order=None, rng_states=None, checkpoint_extra=None, reduce_values=None,
                 is_main_process=True, cpu_keywords=('roidb',), progress=None,
                 after_step=None):
        if iter_size < 1:
            raise ValueError('iter_size must be >= 1, got {}'.format(iter_size))
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.make_data_loader = make_data_loader
        self.max_iter = int(max_iter)
        self.iter_size = int(iter_size)
        self.output_dir = output_dir
        self.snapshot_period = int(snapshot_period) if snapshot_period else 0
        self.device = torch.device(device) if device is not None else torch.device('cpu')
        self.amp = bool(amp)
        self.stats = stats
        self.data_order = dict(data_order or {'seed': 0, 'start_iter': 0})
        self.rng_states = rng_states
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.reduce_values = reduce_values
        self.is_main_process = is_main_process
        self.cpu_keywords = tuple(cpu_keywords)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.after_step = after_step
        self.interrupt = GracefulInterrupt()
        # per finished step: its total loss, averaged over the step's iter_size passes
        self.loss_history = []
        self.last_checkpoint = None
        # minibatches dropped as invalid (too few visible keypoints), in all and in a row
        self.invalid_minibatches = 0
        self._consecutive_invalid = 0

    # ------------------------------------------------------------------------------------------
    def _forward(self, batch):
        if isinstance(self.model, DataParallel):
            return self.model(**batch)
        for k, v in batch.items():
            if not isinstance(v, (list, tuple)) or len(v) != 1:
                raise ValueError('A model that is not DataParallel takes one minibatch per step: '
                                 'batch[{!r}] must be a list of one entry, got {}'.format(
                                     k, len(v) if isinstance(v, (list, tuple)) else type(v)))
        kwargs = scatter_minibatches(batch, [self.device], self.cpu_keywords)[0]
        return self.model(**kwargs)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _no_sync(self, last_pass):
        # DDP: all-reduce the gradients once per step, at the last pass's backward.
        if not last_pass and hasattr(self.model, 'no_sync'):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _new_data_iter(self, start_iter):
        """``iter(loader)`` with SIGINT and SIGTERM blocked while it starts its worker
        processes. The workers inherit the blocked mask and ignore both signals once started
        (``roi_data.loader.worker_init_fn``), so a signal sent to the whole process group (Ctrl-C,
        ``timeout``, Slurm) reaches only this process, which stops cleanly, instead of killing
        the workers under it; one arriving meanwhile is delivered here when the mask is lifted,
        not lost."""
        loader = self.make_data_loader(start_iter)
        if not hasattr(signal, 'pthread_sigmask'):
            return iter(loader)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return iter(loader)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _next_batch(self):
        try:
            batch = next(self._data_iter)
        except StopIteration:
            # A finite loader: start it again from where the data order now is.
            self._data_iter = self._new_data_iter(self._consumed)
            batch = next(self._data_iter)
        self._consumed += 1
        return batch

    def _save(self, step):
        """Checkpoint the state at the end of ``step`` (recorded when it finished)."""
        if self.output_dir is None or not self.is_main_process or step < 0:
            return None
        if self.last_checkpoint is not None and self.last_checkpoint[0] == step:
            return self.last_checkpoint[1]
        data_order = dict(self.data_order, start_iter=self._consumed_at_step_end)
        extra = dict(self.checkpoint_extra, iter_size=self.iter_size)
        path = save_checkpoint(self.output_dir, step, self.model, self.optimizer, self.scheduler,
                               data_order=data_order, extra=extra,
                               rng_states=self._rng_at_step_end)
        self.last_checkpoint = (step, path)
        return path

    def _drop_invalid_minibatch(self, step):
        self.invalid_minibatches += 1
        self._consecutive_invalid += 1
        logger.debug('Step %d: minibatch %d dropped (too few visible keypoints, '
                     'KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH); drawing the next one',
                     step, self._consumed - 1)
        if self._consecutive_invalid >= MAX_CONSECUTIVE_INVALID:
            # Detectron's loader would draw forever
            from pydetectron.core.config import cfg
            raise ConfigError(
                'KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH = {}: the last {} minibatches all '
                'had no more visible keypoints than that in their keypoint RoIs, and such '
                'minibatches do not train; lower the key or check the keypoints of the '
                'dataset'.format(cfg.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH,
                                 self._consecutive_invalid))

    # ------------------------------------------------------------------------------------------
    def train(self, start_step=0):
        """Train from ``start_step``; returns the last finished step. Raises
        ``TrainingDiverged`` or ``TrainingInterrupted`` after saving when stopped early."""
        self._consumed = int(self.data_order.get('start_iter', 0))
        self._updating = False
        # the last step whose update is done (set in _run_step, right after the update)
        self._last_updated = start_step - 1
        last_finished = start_step - 1
        bar = None
        if self.progress and self.is_main_process:
            from tqdm import tqdm
            bar = tqdm(total=self.max_iter, initial=start_step, dynamic_ncols=True, unit='step')
            if self.stats is not None:
                self.stats.write = bar.write
        distributed = self.reduce_values is not None
        self.model.train()
        try:
            # The handlers are in place before the loader's workers start, so a signal at any
            # time from here on is a clean stop.
            with self.interrupt:
                # Create the data iterator *before* restoring the RNG states: creating it may
                # draw from the global torch generator (DataLoader's base seed), which the
                # uninterrupted run did once, before its first step.
                self._data_iter = self._new_data_iter(self._consumed)
                if self.rng_states is not None:
                    set_rng_states(self.rng_states, model_generators(self.model))
                self._rng_at_step_end = get_rng_states(model_generators(self.model))
                self._consumed_at_step_end = self._consumed
                try:
                    for step in range(start_step, self.max_iter):
                        if not distributed and self.interrupt.requested:
                            break
                        finished = self._run_step(step)
                        if not finished:
                            break
                        last_finished = step
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss='%.4f' % self.loss_history[-1], refresh=False)
                        if self.after_step is not None and not self.interrupt.requested:
                            self.after_step(self.model, step)
                        if self.snapshot_period and (step + 1) % self.snapshot_period == 0:
                            self._save(step)
                        if self._stop_after_step:
                            break
                except Exception as e:
                    self._stop_on_failure_after_signal(e, self._last_updated)
                    raise
                if self.interrupt.requested:
                    path = self._save(last_finished)
                    raise TrainingInterrupted(self.interrupt.signum, last_finished, path)
                self._save(last_finished)
        finally:
            if bar is not None:
                bar.close()
            self._data_iter = None
        return last_finished

    def _stop_on_failure_after_signal(self, exc, last_finished):
        """An exception in the loop caused by a stop signal -- raised after the stop was
        requested, or the DataLoader's "worker killed by signal: Terminated" when a worker died
        with the process group -- still saves the last finished step and ends as an interrupt
        (``TrainingInterrupted``). Unless the failure struck inside an optimizer update (the
        weights would be half-updated), in which case it propagates unchanged."""
        if isinstance(exc, (TrainingInterrupted, TrainingDiverged)):
            return
        signum = self.interrupt.signum if self.interrupt.requested else \
            worker_killed_by_stop_signal(exc)
        if signum is None or self._updating:
            return
        logger.warning('%s after %s: saving the last finished step %d',
                       type(exc).__name__, signal.Signals(signum).name, last_finished)
        path = self._save(last_finished)
        raise TrainingInterrupted(signum, last_finished, path) from exc

    def _run_step(self, step):
        """One optimizer step; False when it was abandoned (stop requested before its update)."""
        self._stop_after_step = False
        distributed = self.reduce_values is not None
        if self.stats is not None:
            self.stats.IterTic()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        inner = 0
        while inner < self.iter_size:
            last_pass = inner == self.iter_size - 1
            if not distributed and self.interrupt.requested:
                return False   # abandon before reading more data
            try:
                batch = self._next_batch()
            except Exception as e:
                if not self.interrupt.requested:
                    raise
                # e.g. the loader's workers got the signal too and died: the stop wins.
                logger.warning('Data loading failed after the stop request (%s): abandoning '
                               'step %d', e, step)
                return False
            with self._no_sync(last_pass):
                with self._autocast():
                    out = self._forward(batch)
                losses, metrics = _model_outputs(out)
                names = list(losses) + list(metrics)
                # One stacked tensor (dtypes promoted) serves the values read on the host and
                # the total loss: a handful of operators a pass instead of a few per loss.
                stacked = torch.stack([v if v.dim() == 0 else v.reshape(()) for v in
                                       list(losses.values()) + list(metrics.values())])
                values = stacked.detach().float()
                total_loss = stacked[:len(losses)].float().sum()
                valid = out.get('minibatch_valid')
                backward_first = valid is None and not distributed
                if backward_first:
                    # Nothing to agree on before the backward pass (no other rank, no minibatch
                    # to drop): it is queued first and the values are read while the device
                    # still runs it. Backward changes no parameter, so a stop or a non-finite
                    # loss found then still saves and leaves the weights of the last step.
                    pending = _HostCopy(values)
                    total_loss.backward()
                    values = pending.result() + [1.0, 1.0 if self.interrupt.requested else 0.0]
                else:
                    valid = (valid.detach().float().reshape(1).to(values.device)
                             if valid is not None else values.new_ones(1))
                    flag = torch.tensor([1.0 if self.interrupt.requested else 0.0],
                                        device=values.device)
                    values = torch.cat([values, valid, flag])
                    if self.reduce_values is not None:
                        values = self.reduce_values(values)
                    values = values.cpu().tolist()
                stop_requested = values[-1] > 0
                # averaged over devices and ranks: below 1 when any minibatch of the pass is
                # invalid
                pass_valid = values[-2] > 1.0 - 1e-6
                loss_values = dict(zip(names[:len(losses)], values[:len(losses)]))
                metric_values = dict(zip(names[len(losses):], values[len(losses):-2]))
                if not pass_valid:
                    # Detectron's loader draws the next minibatch in its place: nothing of this
                    # one trains, is counted as a pass or logged (it stays consumed).
                    del out, losses, metrics, stacked, total_loss
                    self._drop_invalid_minibatch(step)
                    if stop_requested:
                        if not self.interrupt.requested:
                            self.interrupt.request()
                        return False   # the step has no update yet: abandon it
                    continue
                self._consecutive_invalid = 0
                for k, v in loss_values.items():
                    if not math.isfinite(v):
                        path = self._save(step - 1)
                        raise TrainingDiverged(k, v, step, path)
                if stop_requested:
                    if not self.interrupt.requested:   # another rank got the signal
                        self.interrupt.request()
                    if not last_pass:
                        return False   # abandon: no update of this step has happened
                    self._stop_after_step = True
                if not backward_first:
                    total_loss.backward()
            total += sum(loss_values.values())
            if self.stats is not None:
                self.stats.UpdateIterStats(loss_values, metric_values, inner)
            inner += 1
        # The LR is only read by the update, so it is set here: an abandoned step never changes
        # the schedule or the momentum history.
        self._updating = True
        lr = self.scheduler.set_lr_for_iter(step)
        self.optimizer.step()
        self._updating = False
        self._last_updated = step
        self._rng_at_step_end = get_rng_states(model_generators(self.model))
        self._consumed_at_step_end = self._consumed
        self.loss_history.append(total / self.iter_size)
        if self.stats is not None:
            self.stats.IterToc()
            if self.is_main_process:
                self.stats.LogIterStats(step, lr)
        return True
