"""The run folder (``--output_dir`` of ``tools/train_net_step.py``): what a training run leaves.

    <output_dir>/
        config.yaml      the resolved config (launch.py)
        classes.txt      the class names, one a line, line i = contiguous class id i
                         (0 = __background__)
        log.txt          what the console printed: log records and printed lines, appended to
                         by resumed runs
        metrics.jsonl    one JSON object a line (below)
        ckpt/            checkpoints (checkpoint.py)
        eval/iter_<N>/   detections and evaluator files of the evaluation after step N
        events.out.tfevents.*   TensorBoard scalars (--use_tfboard)

``metrics.jsonl`` records, ``iter`` 1-indexed as the console prints it:

    {"type": "train", "iter": 20, "lr": ..., "loss": ..., "loss_cls": ..., ..., "time": ...,
     "eta": "0:12:03", "mem": 1234, "host_mem": 2345}
    {"type": "eval", "iter": 20, "results": {"<dataset>": {"box": {"AP": ..., ...}}}}

A train record holds the values of that step itself (its mean over ``iter_size`` passes), not the
console's median over 20 steps, so that a resumed run writes exactly the lines an uninterrupted
one does: on resuming after step N, records of later steps (written by the interrupted run after
its last checkpoint) are dropped before training goes on. Only ``time``, ``eta``, ``mem`` (CUDA
memory) and ``host_mem`` (peak resident memory of the process, MiB) depend on the machine.
``tools/plot_metrics.py`` draws the file.
"""
import io
import json
import logging
import math
import os
import re
import sys

logger = logging.getLogger(__name__)

LOG_FILE = 'log.txt'
METRICS_FILE = 'metrics.jsonl'
CLASSES_FILE = 'classes.txt'


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, 'item') and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class MetricsFile:
    """Appends records to ``metrics.jsonl``; ``truncate_after(iter)`` drops later ones."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, METRICS_FILE)

    def truncate_after(self, last_iter):
        """Keep the records of ``iter <= last_iter`` (a resume after step ``last_iter - 1``)."""
        if not os.path.isfile(self.path):
            return
        kept = []
        with open(self.path, 'r') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue   # a line cut short by a kill
                if rec.get('iter', 0) <= last_iter:
                    kept.append(line if line.endswith('\n') else line + '\n')
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record):
        with open(self.path, 'a') as f:
            f.write(json.dumps(_plain(record), sort_keys=False) + '\n')
            f.flush()


def read_metrics(path):
    """The records of a metrics.jsonl (a run folder or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    records = []
    with open(path, 'r') as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


class _Tee(io.TextIOBase):
    """A text stream writing to the console stream and to the log file."""

    def __init__(self, stream, log):
        self._stream = stream
        self._log = log

    def write(self, s):
        self._stream.write(s)
        if not self._log.closed:
            self._log.write(s)
            self._log.flush()
        return len(s)

    def flush(self):
        self._stream.flush()

    def isatty(self):
        return self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, 'encoding', 'utf-8')


class ConsoleLog:
    """Copies what the console shows into ``log.txt``: the records of the root logger's stream
    handlers (which hold the old ``sys.stdout``) and lines printed to ``sys.stdout``. ``close()``
    puts everything back."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, LOG_FILE)
        self._file = open(self.path, 'a')
        self._stdout = sys.stdout
        self._handlers = []
        root = logging.getLogger()
        for h in root.handlers:
            if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr):
                fh = logging.StreamHandler(self._file)
                fh.setFormatter(h.formatter)
                fh.setLevel(h.level)
                self._handlers.append(fh)
        for fh in self._handlers:
            root.addHandler(fh)
        sys.stdout = _Tee(self._stdout, self._file)

    def close(self):
        root = logging.getLogger()
        for fh in self._handlers:
            root.removeHandler(fh)
        if isinstance(sys.stdout, _Tee):
            sys.stdout = self._stdout
        self._file.close()


def write_class_names(output_dir, classes):
    with open(os.path.join(output_dir, CLASSES_FILE), 'w') as f:
        f.write(''.join(c + '\n' for c in classes))


def tensorboard_hint(output_dir):
    """The one line that says how to look at the TensorBoard events."""
    return ('TensorBoard events in {0}: view them with `pip install tensorboard; '
            'tensorboard --logdir {0}`'.format(os.path.abspath(output_dir)))


def _peak_rss_mib():
    """Peak resident memory of this process in MiB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib / (1024 * 1024) if sys.platform == 'darwin' else kib / 1024)   # bytes on macOS


def _class_names(dataset_names):
    from pydetectron.datasets.json_dataset import JsonDataset
    try:
        return JsonDataset(dataset_names[0]).classes
    except (FileNotFoundError, KeyError) as e:
        # the run itself reports an unusable dataset; a fake loader (tests) has none
        logger.warning('classes.txt not written: %s', e)
        return None


class RunFolder:
    """The run folder's files of one training process (main process only): ``log.txt`` from
    now on, ``metrics.jsonl`` cut back to ``start_step`` and fed by ``stats.on_log``, and
    ``classes.txt``. ``close()`` stops copying the console."""

    def __init__(self, output_dir, start_step, stats=None, train_datasets=()):
        os.makedirs(output_dir, exist_ok=True)
        self.output_dir = output_dir
        self.console = ConsoleLog(output_dir)
        logger.info('%s training from step %d: %s', 'Starting' if start_step == 0 else 'Resuming',
                    start_step, ' '.join(sys.argv))
        self.metrics = MetricsFile(output_dir)
        self.metrics.truncate_after(start_step)   # iters 1..start_step = steps before it
        if stats is not None:
            stats.on_log = self.log_train
        classes = _class_names(train_datasets) if train_datasets else None
        if classes:
            write_class_names(output_dir, classes)

    def log_train(self, cur_iter, lr, stats, step_values):
        record = {'type': 'train', 'iter': cur_iter + 1, 'lr': float(lr)}
        record.update(sorted(step_values.items()))
        record.update(time=stats['time'], eta=stats['eta'])
        if stats.get('mem') is not None:
            record['mem'] = stats['mem']   # CUDA: peak MiB allocated on the device
        record['host_mem'] = _peak_rss_mib()
        self.metrics.write(record)

    def has_eval_record(self, iter_):
        if not os.path.isfile(self.metrics.path):
            return False
        return any(r.get('type') == 'eval' and r.get('iter') == iter_
                   for r in read_metrics(self.metrics.path))

    def close(self):
        self.console.close()


def curves(records):
    """The series ``tools/plot_metrics.py`` draws: ``(losses, evals)`` where ``losses`` is
    ``{name: ([iter], [value])}`` for ``loss`` and every ``loss_*`` of the train records (FPN's
    per-level RPN losses summed into ``loss_rpn_cls`` / ``loss_rpn_bbox``) and ``evals`` is
    ``{'<dataset>/<task>/<metric>': ([iter], [value])}`` for the summary metrics (AP, AP50, AP75
    and VOC's AP50 mAP; not the per-class ones, not -1 / missing values)."""
    losses, evals = {}, {}
    for rec in records:
        it = rec.get('iter')
        if rec.get('type') == 'train':
            values = {}
            for k, v in rec.items():
                if not (k == 'loss' or k.startswith('loss_')) or v is None:
                    continue
                m = re.match(r'^(loss_rpn_(?:cls|bbox))_fpn\d+$', k)
                if m:
                    values[m.group(1)] = values.get(m.group(1), 0.0) + v
                else:
                    values[k] = v
            for k, v in values.items():
                xs, ys = losses.setdefault(k, ([], []))
                xs.append(it)
                ys.append(v)
        elif rec.get('type') == 'eval':
            for dataset, tasks in (rec.get('results') or {}).items():
                for task, metrics in tasks.items():
                    for metric in ('AP', 'AP50', 'AP75'):
                        v = metrics.get(metric)
                        if v is None or v < 0:
                            continue
                        xs, ys = evals.setdefault('%s/%s/%s' % (dataset, task, metric), ([], []))
                        xs.append(it)
                        ys.append(v)
    return losses, evals
