"""Evaluation during and after training: the model being trained, scored on ``cfg.TEST.DATASETS``.

* **Periodic** (``--eval_period N`` of ``tools/train_net_step.py``, or ``TEST.EVAL_PERIOD``;
  0 = off, detectron2's key): after every N-th step and after the last one.
* **After training** (Detectron's default; ``--skip-test`` turns it off): once, after the last
  step, unless the periodic evaluation just did it.

Each evaluation runs ``inference.run_inference`` on the (unwrapped) model in eval mode in this
process, writes its files under ``<output_dir>/eval/iter_<N>/``, logs the results (Detectron's
evaluator lines and ``copypaste`` lines), appends an ``eval`` record to ``metrics.jsonl`` and, with
TensorBoard on, writes ``eval/<dataset>/<task>/<metric>`` scalars at that step.

It does not disturb training: it runs between two steps (after the step's checkpoint decision,
before the next step reads data), under ``torch.no_grad``; the global random states (torch, CUDA,
numpy, Python) and the model's own generators are saved before and restored after, and the model
is put back in train mode. The training data order is the loader's and is not touched. Under
``DistributedDataParallel`` the main process evaluates while the others wait at a barrier.
"""
import logging
import math
import os
import tempfile
from argparse import Namespace

import torch

from pydetectron.engine.checkpoint import get_rng_states, model_generators, set_rng_states

logger = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if hasattr(model, 'module') else model


def evaluate_model(model, output_dir, device=None, quiet=True):
    """Run inference and evaluation on ``cfg.TEST.DATASETS`` with ``model`` (training state
    restored afterwards) -> ``{dataset: {task: {metric: value}}}``."""
    from pydetectron.engine import inference
    net = _unwrap(model)
    was_training = net.training
    generators = model_generators(net)
    rng = get_rng_states(generators)
    use_cuda = device is not None and torch.device(device).type == 'cuda'
    args = Namespace(output_dir=output_dir, cuda=use_cuda, quiet=quiet, vis=False,
                     load_ckpt=None, load_detectron=None)
    try:
        with torch.no_grad():
            results = inference.run_inference(args, model=net)
    finally:
        set_rng_states(rng, generators)
        net.train(was_training)
    return results


def flat_metrics(results):
    """``{'<dataset>/<task>/<metric>': value}`` of a results dict."""
    flat = {}
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            for metric, value in metrics.items():
                flat['%s/%s/%s' % (dataset, task, metric)] = float(value)
    return flat


class TrainingEvaluator:
    """The periodic and final evaluations of one training run (see the module docstring).

    Args:
        period: evaluate after steps ``period - 1, 2 * period - 1, ...`` and the last (0: never).
        max_iter: ``SOLVER.MAX_ITER``.
        output_dir: the run folder (None with ``--no_save``: a temporary folder per evaluation).
        metrics_file: a ``run_folder.MetricsFile`` or None.
        tb_logger: a tensorboardX ``SummaryWriter`` or None.
        device: the model's device. is_main_process / distributed: DDP roles.
    """

    def __init__(self, period, max_iter, output_dir=None, metrics_file=None, tb_logger=None,
                 device=None, is_main_process=True, distributed=False):
        self.period = max(0, int(period or 0))
        self.max_iter = int(max_iter)
        self.output_dir = output_dir
        self.metrics_file = metrics_file
        self.tb_logger = tb_logger
        self.device = device
        self.is_main_process = is_main_process
        self.distributed = distributed
        self.last_evaluated_step = None
        self.history = []   # (step, results)

    def due(self, step):
        return self.period > 0 and ((step + 1) % self.period == 0 or step == self.max_iter - 1)

    def after_step(self, model, step):
        """The trainer's hook: evaluate when ``step`` is due."""
        if self.due(step):
            self.evaluate(model, step)

    def evaluate(self, model, step):
        """Evaluate now (after ``step``, 0-indexed) -> results (None on other DDP ranks)."""
        results = None
        if self.is_main_process:
            logger.info('Evaluating the model after step %d on %s', step + 1,
                        ', '.join(_test_datasets()))
            if self.output_dir is not None:
                eval_dir = os.path.join(self.output_dir, 'eval', 'iter_%d' % (step + 1))
                results = evaluate_model(model, eval_dir, self.device)
            else:
                with tempfile.TemporaryDirectory(prefix='pydetectron_eval_') as eval_dir:
                    results = evaluate_model(model, eval_dir, self.device)
            self._record(step, results)
        if self.distributed:
            torch.distributed.barrier()
        self.last_evaluated_step = step
        return results

    def final(self, model, last_step):
        """The test after training (Detectron's), unless ``last_step`` was just evaluated."""
        if self.last_evaluated_step == last_step:
            return self.history[-1][1] if self.history else None
        return self.evaluate(model, last_step)

    def _record(self, step, results):
        self.history.append((step, results))
        if self.metrics_file is not None:
            self.metrics_file.write({'type': 'eval', 'iter': step + 1, 'results': results})
        if self.tb_logger is not None:
            for tag, value in flat_metrics(results).items():
                if math.isfinite(value):
                    self.tb_logger.add_scalar('eval/' + tag, value, step)


def _test_datasets():
    from pydetectron.core.config import cfg
    return list(cfg.TEST.DATASETS)


def check_test_datasets(cfg, num_classes):
    """Evaluation needs ``TEST.DATASETS`` with the training classes: checked before training so
    that a wrong name ends the run at once, not after hours."""
    from pydetectron.core.config_compat import ConfigValueError
    from pydetectron.datasets import dataset_catalog
    if not cfg.TEST.DATASETS:
        raise ConfigValueError(
            'TEST.DATASETS is empty: name the datasets to evaluate on in the config (or --set '
            "TEST.DATASETS \"('<name>',)\"), or pass --skip-test and no --eval_period")
    names, test_classes = dataset_catalog.resolve_dataset_arg(tuple(cfg.TEST.DATASETS),
                                                              training=False)
    for name in names:
        # the files must be there now, not after hours of training
        dataset_catalog.prepare(name)
        for path in (dataset_catalog.get_ann_fn(name), dataset_catalog.get_im_dir(name)):
            if not os.path.exists(path):
                raise FileNotFoundError('TEST.DATASETS: %s of dataset %s not found'
                                        % (path, name))
    if test_classes != num_classes:
        raise ConfigValueError(
            'TEST.DATASETS %s has %d classes (with the background), the training data %d: '
            'evaluation needs the same classes (or pass --skip-test)'
            % (', '.join(names), test_classes, num_classes))
    return names


def build_training_evaluator(args, cfg, output_dir, metrics_file, tb_logger, device, info):
    """The evaluator of a training run, or None when it evaluates nothing.

    ``--eval_period`` (else TEST.EVAL_PERIOD) > 0 needs usable TEST.DATASETS (checked now, an
    error otherwise). The test after training (unless ``--skip-test``) is Detectron's default: when
    TEST.DATASETS cannot be used, it is skipped with a warning that says why, and training runs.
    """
    period = getattr(args, 'eval_period', None)
    period = int(cfg.TEST.EVAL_PERIOD if period is None else period)
    if period < 0:
        from pydetectron.core.config_compat import ConfigValueError
        raise ConfigValueError('--eval_period / TEST.EVAL_PERIOD must be >= 0, got %d' % period)
    skip_test = bool(getattr(args, 'skip_test', False))
    if period == 0 and skip_test:
        return None
    try:
        check_test_datasets(cfg, cfg.MODEL.NUM_CLASSES)
    except (ValueError, KeyError, FileNotFoundError) as e:
        if period > 0:
            raise
        logger.warning('No test after training: %s', e)
        return None
    return TrainingEvaluator(period, cfg.SOLVER.MAX_ITER, output_dir=output_dir,
                             metrics_file=metrics_file, tb_logger=tb_logger, device=device,
                             is_main_process=info.is_main_process, distributed=info.distributed)


def catch_up(evaluator, model, last_step, run, info):
    """On resuming after ``last_step``: run its evaluation when it was due and the interrupted
    run stopped before writing it (so the metrics file ends as an uninterrupted run's)."""
    if last_step < 0 or not evaluator.due(last_step):
        return
    missing = [run is not None and not run.has_eval_record(last_step + 1)]
    if info.distributed:
        torch.distributed.broadcast_object_list(missing, src=0)
    if missing[0]:
        logger.info('The evaluation after step %d is missing: running it before training goes '
                    'on', last_step + 1)
        evaluator.evaluate(model, last_step)
    else:
        evaluator.last_evaluated_step = last_step
