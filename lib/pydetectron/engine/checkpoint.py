"""Training checkpoints: ``<output_dir>/ckpt/model_step{N}.pth``, written atomically.

A checkpoint is the state after step N (0-indexed, the seed's naming) finished::

    {'step': N, 'train_size': int, 'batch_size': int, 'iter_size': int,
     'model': state_dict, 'optimizer': state_dict, 'scheduler': {'cur_lr', ...},
     'data_order': {'seed': int, 'start_iter': minibatches consumed so far},
     'cfg': resolved config as a YAML string, 'args': {flag: plain value},
     'rng': {'torch', 'cuda', 'numpy', 'python', 'generators': {model attribute: state}},
     'version': pydetectron version}

Only tensors, plain containers, numbers and strings are stored, so checkpoints are read with
``torch.load(weights_only=True)``: an untrusted file cannot run code when loaded.

Writes go to a hidden temporary file in the same folder, are flushed and fsync'ed, then renamed
over the final name with ``os.replace`` (atomic on POSIX) and the folder is fsync'ed. A crash or
``kill -9`` mid-write leaves at worst a stray ``.model_step{N}.pth.tmp-*`` file, which no reader
looks at, and the previous checkpoint untouched. ``find_latest_checkpoint`` also skips a
``model_step*.pth`` that is not a complete torch zip archive (e.g. copied half-way by hand).
"""
import glob
import logging
import os
import random
import re
import zipfile

import numpy as np
import torch

logger = logging.getLogger(__name__)

CKPT_DIRNAME = 'ckpt'
_CKPT_RE = re.compile(r'^model_step(\d+)\.pth$')


# A checkpoint that cannot be used: unreadable, incomplete, of another architecture or kind.
from pydetectron.utils.errors import CheckpointError, OutputError, one_line  # noqa: E402,F401


def checkpoint_dir(output_dir):
    return os.path.join(output_dir, CKPT_DIRNAME)


def checkpoint_path(output_dir, step):
    return os.path.join(checkpoint_dir(output_dir), 'model_step{}.pth'.format(step))


def unwrap_model(model):
    """The module inside DataParallel / DistributedDataParallel wrappers."""
    while hasattr(model, 'module') and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


# ---------------------------------------------------------------------------------------------- #
# RNG states (for an exact resume)
# ---------------------------------------------------------------------------------------------- #

def model_generators(model):
    """The ``torch.Generator`` attributes of the (unwrapped) model, by name: e.g. the
    ``target_generator`` the RoI sampling may draw from instead of the global RNG."""
    return {k: v for k, v in vars(unwrap_model(model)).items() if isinstance(v, torch.Generator)}


def get_rng_states(generators=None):
    """torch (CPU and every initialised CUDA device), numpy and Python ``random`` states, and
    those of ``generators`` ({name: torch.Generator}), as tensors / plain containers (numpy's key
    array becomes an int64 tensor)."""
    np_state = np.random.get_state()
    states = {
        'torch': torch.get_rng_state(),
        'numpy': {'name': str(np_state[0]), 'keys': torch.from_numpy(np_state[1].astype(np.int64)),
                  'pos': int(np_state[2]), 'has_gauss': int(np_state[3]),
                  'cached_gaussian': float(np_state[4])},
        'python': random.getstate(),
        'cuda': [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    states['generators'] = {k: g.get_state() for k, g in (generators or {}).items()}
    return states


def set_rng_states(states, generators=None):
    """Restore ``get_rng_states``' output (``generators``: the same names as when saved)."""
    torch.set_rng_state(states['torch'])
    n = states['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['cached_gaussian']))
    py = states['python']
    # weights_only loading gives lists back where tuples were saved.
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = states.get('cuda') or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            logger.warning('Checkpoint has CUDA RNG states for %d devices, this machine has %d: '
                           'CUDA random streams are not restored', len(cuda),
                           torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(cuda)
    saved = states.get('generators') or {}
    for name, g in (generators or {}).items():
        if name in saved:
            g.set_state(saved[name])
        else:
            logger.warning('Checkpoint has no state for the generator %r: it is not restored', name)


# ---------------------------------------------------------------------------------------------- #
# Saving
# ---------------------------------------------------------------------------------------------- #

def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, '.{}.tmp-{}'.format(os.path.basename(path), os.getpid()))
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupted or failed: the final name was never touched.
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def remove_stale_temporaries(folder):
    """Delete leftovers of writes killed mid-way (``.model_step*.pth.tmp-<pid>``)."""
    for tmp in glob.glob(os.path.join(folder, '.model_step*.pth.tmp-*')):
        try:
            os.remove(tmp)
            logger.info('Removed the leftover of an interrupted checkpoint write: %s', tmp)
        except OSError:
            pass


def save_checkpoint(output_dir, step, model, optimizer, scheduler=None, data_order=None,
                    extra=None, rng_states=None):
    """Write ``ckpt/model_step{step}.pth`` atomically; returns its path.

    ``extra`` adds plain entries ('train_size', 'batch_size', 'iter_size', 'cfg', 'args', ...).
    ``rng_states`` (default: the current ones) should be those at the end of step ``step``.
    """
    from pydetectron import __version__
    model = unwrap_model(model)
    ckpt = {
        'step': int(step),
        'model': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scheduler': scheduler.state_dict() if scheduler is not None else None,
        'data_order': dict(data_order) if data_order is not None else None,
        'rng': rng_states if rng_states is not None else get_rng_states(),
        'version': __version__,
    }
    for k, v in (extra or {}).items():
        ckpt.setdefault(k, v)
    path = checkpoint_path(output_dir, step)
    folder = os.path.dirname(path)
    try:
        remove_stale_temporaries(folder)
        atomic_torch_save(ckpt, path)
    except OSError as e:
        # A full disk, a read-only or vanished folder: the write never touched a final name.
        previous = find_latest_checkpoint(output_dir)
        raise OutputError('cannot write the checkpoint of step {} to the folder {}: {}; {}'.format(
            step, folder, e.strerror or one_line(e),
            'the previous checkpoint {} is kept'.format(previous) if previous
            else 'no earlier checkpoint exists')) from e
    logger.info('save model: %s', path)
    return path


# ---------------------------------------------------------------------------------------------- #
# Loading
# ---------------------------------------------------------------------------------------------- #

def is_complete_checkpoint(path):
    """A torch zip archive whose central directory reads back (a truncated file fails)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def list_checkpoints(output_dir):
    """(step, path) of every ``model_step{N}.pth`` under ``output_dir/ckpt``, by step."""
    folder = checkpoint_dir(output_dir)
    found = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = _CKPT_RE.match(name)
            if m:
                found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def find_latest_checkpoint(output_dir):
    """Path of the newest complete checkpoint under ``output_dir/ckpt``, or None."""
    for step, path in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning('Skipping incomplete checkpoint %s (not a complete torch archive)', path)
    return None


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint file, or any checkpoint in a folder, that does not exist."""


# Keys a checkpoint needs to continue training exactly (``--resume``), beyond 'model'.
RESUME_KEYS = ('step', 'optimizer')

_PICKLE_MAGIC = b'\x80'
_ZIP_MAGIC = b'PK\x03\x04'


def _head(path, n=4):
    with open(path, 'rb') as f:
        return f.read(n)


def load_checkpoint(path, for_resume=False, flag=None):
    """Read a pydetectron checkpoint with ``weights_only=True`` onto the CPU.

    Every way a file can be unusable is a ``CheckpointError`` naming the file (and ``flag``,
    the command-line flag that named it): missing, empty, truncated or not a torch archive (a
    Detectron ``.pkl`` gets a hint to use ``--load_detectron``), holding anything but tensors and
    plain data, no 'model' state dict, or -- ``for_resume`` -- weights only, without the step and
    optimizer state that ``--resume`` continues from.
    """
    who = '{} {}'.format(flag, path) if flag else 'checkpoint {}'.format(path)
    if not os.path.isfile(path):
        raise MissingCheckpointError('Checkpoint file not found: {}{}'.format(
            path, ' ({})'.format(flag) if flag else ''))
    try:
        head = _head(path)
    except OSError as e:
        raise CheckpointError('{}: cannot read it: {}'.format(who, e.strerror or e)) from e
    if not head:
        raise CheckpointError('{}: the file is empty'.format(who))
    if head[:1] == _PICKLE_MAGIC and head[:4] != _ZIP_MAGIC:
        raise CheckpointError('{}: this is a pickle, not a torch checkpoint (a Detectron .pkl? '
                              'load it with --load_detectron)'.format(who))
    if not is_complete_checkpoint(path):
        raise CheckpointError('{} is incomplete or not a torch checkpoint (truncated, or a write '
                              'was interrupted?); use an earlier model_step*.pth'.format(who))
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # the unpickler refuses anything but tensors and plain data
        raise CheckpointError('Cannot load {} with weights_only=True (it holds something other '
                              'than tensors and plain data, or is damaged): {}'.format(
                                  who, one_line(e))) from e
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        raise CheckpointError("{} has no 'model' entry: not a pydetectron training "
                              "checkpoint".format(who))
    state = ckpt['model']
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("{}: its 'model' entry is not a state dict (names -> tensors)"
                              .format(who))
    if for_resume:
        missing = [k for k in RESUME_KEYS if ckpt.get(k) is None]
        if missing:
            raise CheckpointError(
                '--resume: {} holds model weights only (no {}), not a training state to '
                'continue; to start a new run from these weights, pass --load_ckpt {} without '
                '--resume'.format(path, ' or '.join(repr(k) for k in missing), path))
    return ckpt


def state_dict_mismatches(model_state, ckpt_state):
    """Lines describing differences between two state dicts (missing, unexpected, shape)."""
    lines = []
    for k, v in model_state.items():
        if k not in ckpt_state:
            lines.append('missing in checkpoint: {} {}'.format(k, tuple(v.shape)))
        elif tuple(ckpt_state[k].shape) != tuple(v.shape):
            lines.append('shape mismatch: {} checkpoint {} vs model {}'.format(
                k, tuple(ckpt_state[k].shape), tuple(v.shape)))
    for k, v in ckpt_state.items():
        if k not in model_state:
            lines.append('unexpected in checkpoint: {} {}'.format(k, tuple(v.shape)))
    return lines


def load_model_state(model, state_dict, source='checkpoint', max_listed=5):
    """Load ``state_dict`` into ``model`` (unwrapped), exactly; a checkpoint of another
    architecture raises ``CheckpointError`` listing the first mismatched keys and shapes."""
    model = unwrap_model(model)
    # Tolerate a checkpoint saved from a wrapper ('module.' prefixes).
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    problems = state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        shown = problems[:max_listed]
        more = len(problems) - len(shown)
        raise CheckpointError(
            '{} does not match this model (a different architecture or config?); first '
            'mismatches: {}{}'.format(source, '; '.join(shown),
                                      '; ... and {} more'.format(more) if more else ''))
    model.load_state_dict(state_dict, strict=True)


def load_optimizer_state(optimizer, state, source='checkpoint'):
    """``optimizer.load_state_dict`` with a ``CheckpointError`` naming ``source`` when the saved
    parameter groups do not fit (another optimizer or model)."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError('{}: its optimizer state does not fit this run ({}): {}'.format(
            source, type(optimizer).__name__, one_line(e))) from e


# ---------------------------------------------------------------------------------------------- #
# Weights files of every kind
# ---------------------------------------------------------------------------------------------- #

# torch.save's legacy (non-zip) format starts with a pickled magic number (protocol 2)
_LEGACY_TORCH_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'

# The one loader of weights files (``load_weights``: checkpoints of this project and of
# Detectron.pytorch, Detectron pickles, fine-tuning, partial loads) and its format registry live in
# ``engine.initial_weights``; these names reach them from here too (that module imports this one,
# so they are looked up on first use).
_FORWARDED = ('load_weights', 'register_weights_format', '_WEIGHTS_FORMATS')


def __getattr__(name):
    if name in _FORWARDED:
        from pydetectron.engine import initial_weights
        return getattr(initial_weights, name)
    raise AttributeError('module {!r} has no attribute {!r}'.format(__name__, name))
