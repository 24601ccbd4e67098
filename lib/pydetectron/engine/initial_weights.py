"""Weights files: the one loader (``load_weights``) that training and every tool use, for
``TRAIN.WEIGHTS`` / ``TEST.WEIGHTS``, ``--load_ckpt`` and ``--load_detectron``, with Detectron's
rules and fine-tuning to another class count. (``engine.checkpoint`` writes and resumes training
checkpoints; its ``load_weights`` name is this function.)

Which file, in order (the flags override the config, as in Detectron.pytorch):
  training  ``--resume`` / auto-resume (``launch``), else ``--load_ckpt`` or ``--load_detectron``,
            else ``TRAIN.WEIGHTS``, else ImageNet weights (MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS)
  testing   ``--load_ckpt`` or ``--load_detectron``, else ``TEST.WEIGHTS``

What a file may be (``read_weights``): a Detectron ``.pkl`` (a trained model, or an ImageNet
backbone such as ``R-50.pkl``), a ``.pth`` checkpoint of this project, a ``.pth`` checkpoint of
Detectron.pytorch (legacy or zip format: ``utils.detectron_pytorch_checkpoint``), or a
Caffe-converted ImageNet ``.pth``. Every one becomes Detectron blobs or this project's state dict.

``TRAIN.WEIGHTS`` loads as Detectron's ``initialize_gpu_from_weights_file`` does: each parameter
whose blob the file has is loaded, the others keep their initialisation (an ImageNet file fills
the body only). The class-specific layers (``CLASS_HEAD_BLOBS``: cls_score, bbox_pred,
mask_fcn_logits, kps_score...) of another shape -- fine-tuning on a dataset with another class
count -- are skipped with a warning naming them, or refused with ``strict_class_heads`` (the
tools' ``--strict_class_heads`` flag). The test tools load exactly (``strict_class_heads``
None): a model of another class count is a mismatch there.

A checkpoint is read once per tool: ``read_torch_file(..., keep=True)`` (the metadata the test
tools read first, ``checkpoint_meta``) holds the loaded object for the weights loader, which
takes it if the file is unchanged (same path, modification time and size).

Detectron's model-zoo URLs resolve to ``DOWNLOAD_CACHE/<path after the host>``; when that file is
absent the error says how to fetch it (nothing is downloaded here).

A body with frozen BatchNorm (AffineChannel) cannot learn its normalisation: started from random
weights its affines stay at scale 1, offset 0 forever. ``check_frozen_bn_initialised`` refuses
that unless TRAIN.ALLOW_RANDOM_FROZEN_BN (``--allow_random_frozen_bn``) says it is meant.
"""
import logging
import os
import pickle

import torch

from pydetectron.engine import checkpoint as ck
from pydetectron.engine.checkpoint import CheckpointError, load_model_state, unwrap_model
from pydetectron.utils import detectron_pytorch_checkpoint as dpt
from pydetectron.utils.errors import UserInputError
from pydetectron.utils.detectron_weight_helper import (
    CLASS_HEAD_BLOBS, detectron_blobs_of, load_detectron_blobs, load_detectron_pkl)

logger = logging.getLogger(__name__)

__all__ = ["resolve_weights_url", "read_torch_file", "read_weights", "load_weights",
           "register_weights_format", "class_head_mismatches", "check_frozen_bn_initialised",
           "body_uses_frozen_bn"]


# ---------------------------------------------------------------------------------------------- #
# Finding the file
# ---------------------------------------------------------------------------------------------- #

def _is_url(path):
    return isinstance(path, str) and '://' in path


def resolve_weights_url(path, key='TRAIN.WEIGHTS', download_cache=None):
    """A local path for ``path``: unchanged when it is not a URL, else its copy in
    DOWNLOAD_CACHE (Detectron's layout: the URL's path after the host). A missing copy raises
    FileNotFoundError with the command that fetches it."""
    if not _is_url(path):
        return path
    if download_cache is None:
        from pydetectron.core.config import cfg
        download_cache = cfg.DOWNLOAD_CACHE
    rel = path.split('://', 1)[1].split('/', 1)[-1]
    local = os.path.join(download_cache, rel)
    if not os.path.isfile(local):
        raise FileNotFoundError(
            '{} is a URL whose file is not in DOWNLOAD_CACHE; fetch it with: '
            'mkdir -p {} && curl -fL -o {} {}'.format(
                key, os.path.dirname(local), local, path))
    return local


# ---------------------------------------------------------------------------------------------- #
# Reading
# ---------------------------------------------------------------------------------------------- #

# The last torch file read with ``keep=True`` (one entry: a checkpoint can be large), keyed by
# (absolute path, mtime, size): the test tools read a checkpoint's metadata before they know the
# config, then load its weights into the model built from that config -- one torch.load for both.
_KEPT = {}


def _file_key(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _check_file(path, who):
    if not os.path.isfile(path):
        raise ck.MissingCheckpointError('{}: weights file not found'.format(who))
    if os.path.getsize(path) == 0:
        raise CheckpointError('{}: the file is empty'.format(who))


def _is_torch_file(path):
    """A torch.save file: a zip archive, or torch's legacy (pickled, magic-numbered) format."""
    head = ck._head(path, len(ck._LEGACY_TORCH_MAGIC))
    return head[:4] == ck._ZIP_MAGIC or head == ck._LEGACY_TORCH_MAGIC


def _is_detectron_pickle(path):
    """A Detectron ``.pkl``: the extension, or a pickle that is not a legacy torch file."""
    head = ck._head(path, len(ck._LEGACY_TORCH_MAGIC))
    return path.endswith('.pkl') or (head[:1] == ck._PICKLE_MAGIC
                                     and head != ck._LEGACY_TORCH_MAGIC)


def read_torch_file(path, flag=None, keep=False):
    """The object ``torch.load(path, weights_only=True)`` gives, on the CPU, for a checkpoint of
    this project or of Detectron.pytorch (zip or legacy format). Every way the file can be
    unusable is a one-line CheckpointError naming it (and ``flag``).

    ``keep``: hold the object for the next read of the same, unchanged file (which takes it:
    the file is loaded once for ``checkpoint_meta.read_metadata`` and ``load_weights``)."""
    who = '{} {}'.format(flag, path) if flag else path
    _check_file(path, who)
    key = _file_key(path)
    if key in _KEPT:
        return _KEPT.pop(key)
    for stale in [k for k in _KEPT if k[0] == key[0]]:   # the file changed since it was kept
        del _KEPT[stale]
    head = ck._head(path, len(ck._LEGACY_TORCH_MAGIC))
    if head[:4] == ck._ZIP_MAGIC and not ck.is_complete_checkpoint(path):
        raise CheckpointError('{} is incomplete or not a torch checkpoint (truncated, or a write '
                              'was interrupted?); use an earlier model_step*.pth'.format(who))
    if head[:1] == ck._PICKLE_MAGIC and head != ck._LEGACY_TORCH_MAGIC:
        raise CheckpointError('{}: this is a pickle, not a torch checkpoint (a Detectron .pkl? '
                              'name it with the .pkl extension or load it with --load_detectron)'
                              .format(who))
    if head[:4] != ck._ZIP_MAGIC and head != ck._LEGACY_TORCH_MAGIC:
        raise CheckpointError('{} is incomplete or not a torch checkpoint (neither a torch zip '
                              'archive nor a legacy torch file)'.format(who))
    try:
        obj = dpt.read_checkpoint(path)
    except Exception as e:  # weights_only refuses code; damaged files fail to unpickle
        raise CheckpointError('Cannot read weights {} with torch.load(weights_only=True) (not a '
                              'checkpoint of tensors and plain data, or damaged): {}'.format(
                                  who, ck.one_line(e))) from e
    if keep:
        _KEPT.clear()
        _KEPT[key] = obj
    return obj


def read_weights(path, rpn_min_level=2, flag=None, kind=None):
    """('blobs', {blob: array}, None) for a Detectron .pkl, a Detectron.pytorch checkpoint or a
    Caffe-converted ImageNet .pth; ('state_dict', state_dict, checkpoint dict) for a checkpoint
    of this project. ``kind``: 'detectron' (a pickle whatever its name), 'checkpoint' (a torch
    file: a pickle is refused) or None (the extension decides: ``.pkl`` is Detectron's).
    Unreadable files raise CheckpointError naming the file (and ``flag``, the flag or key that
    named it)."""
    who = '{} {}'.format(flag, path) if flag else path
    _check_file(path, who)
    if kind == 'detectron' or (kind is None and path.endswith('.pkl')):
        try:
            return 'blobs', load_detectron_pkl(path), None
        except UserInputError:
            raise          # already one line naming the file (truncated, unsafe, not blobs)
        except (pickle.UnpicklingError, ValueError, EOFError) as e:
            raise CheckpointError('{} is not a readable Detectron weights file: {}'.format(
                who, ck.one_line(e))) from e
    ckpt = read_torch_file(path, flag)
    if not isinstance(ckpt, dict):
        raise CheckpointError('{} holds a {}, expected a checkpoint dict'.format(
            who, type(ckpt).__name__))
    if 'model' in ckpt and isinstance(ckpt['model'], dict):
        state = ckpt['model']
    elif 'state_dict' in ckpt and isinstance(ckpt['state_dict'], dict):
        state = ckpt['state_dict']
    elif ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        state, ckpt = ckpt, {'model': ckpt}
    elif 'model' in ckpt:
        raise CheckpointError("{}: its 'model' entry is not a state dict (names -> tensors)"
                              .format(who))
    else:
        raise CheckpointError("{} has no 'model' entry: not a checkpoint of pydetectron or "
                              "Detectron.pytorch".format(who))
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("{}: its 'model' entry is not a state dict (names -> tensors)"
                              .format(who))
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    if dpt.is_detectron_pytorch_state_dict(state):
        try:
            blobs = dpt.detectron_pytorch_to_blobs(state, rpn_min_level)
        except ValueError as e:
            raise CheckpointError('{}: {}'.format(who, e)) from e
        logger.info('%s is a Detectron.pytorch checkpoint: read through its Detectron blob names',
                    path)
        return 'blobs', blobs, ckpt
    if 'conv1.weight' in state and any(k.startswith('layer1.') for k in state):
        from pydetectron.utils.resnet_weights_helper import convert_caffe_resnet_state_dict
        return 'blobs', convert_caffe_resnet_state_dict(state), None
    return 'state_dict', state, ckpt


# Formats of weights files ``load_weights`` recognises (kind None), tried in order:
# (name, accepts(path) -> bool, load(model, path, flag) or None for the built-in reader).
# Other modules add theirs with ``register_weights_format`` (e.g. checkpoints of other projects).
_WEIGHTS_FORMATS = [('pydetectron', _is_torch_file, None),
                    ('detectron', _is_detectron_pickle, None)]
_BUILT_IN_KIND = {'pydetectron': 'checkpoint', 'detectron': 'detectron'}


def register_weights_format(name, accepts, load, first=True):
    """Add a weights-file format to ``load_weights``: ``accepts(path)`` says whether the file is
    of this format (cheaply: a magic number, an extension, a key), ``load(model, path, flag)``
    loads it into ``model`` raising ``CheckpointError`` (one line) when it does not fit.
    ``first``: try it before the built-in formats."""
    entry = (name, accepts, load)
    _WEIGHTS_FORMATS[:] = [f for f in _WEIGHTS_FORMATS if f[0] != name]
    if first:
        _WEIGHTS_FORMATS.insert(0, entry)
    else:
        _WEIGHTS_FORMATS.append(entry)


# ---------------------------------------------------------------------------------------------- #
# Loading
# ---------------------------------------------------------------------------------------------- #

def _is_class_head(blob):
    return blob is not None and blob.rsplit('_', 1)[0] in CLASS_HEAD_BLOBS


def class_head_mismatches(model, shapes_by_blob=None, state_dict=None):
    """[(parameter name, blob, shape in the file, shape in the model)] for the class-specific
    layers whose shapes differ (give the file as blob shapes or as a state dict)."""
    model = unwrap_model(model)
    out = []
    if shapes_by_blob is not None:
        for name, tensor, blob in detectron_blobs_of(model):
            if _is_class_head(blob) and blob in shapes_by_blob and \
                    tuple(shapes_by_blob[blob]) != tuple(tensor.shape):
                out.append((name, blob, tuple(shapes_by_blob[blob]), tuple(tensor.shape)))
    if state_dict is not None and hasattr(model, 'detectron_weight_mapping'):
        mapping, _ = model.detectron_weight_mapping()
        for name, tensor in model.state_dict().items():
            blob = mapping.get(name)
            if _is_class_head(blob) and name in state_dict and \
                    tuple(state_dict[name].shape) != tuple(tensor.shape):
                out.append((name, blob, tuple(state_dict[name].shape), tuple(tensor.shape)))
    return out


def _handle_mismatches(mismatches, source, strict):
    if not mismatches:
        return set()
    listed = ', '.join('{} (file {} vs model {})'.format(n, list(a), list(b))
                       for n, _, a, b in mismatches)
    if strict:
        raise CheckpointError(
            '{} has class-specific layers of another shape (another number of classes): {}; '
            'drop --strict_class_heads to fine-tune from it with these layers freshly '
            'initialised'.format(source, listed))
    logger.warning('Fine-tuning: %s was trained with another number of classes; these '
                   'class-specific layers keep their initialisation: %s', source, listed)
    return {n for n, _, _, _ in mismatches}


def load_weights(model, path, flag=None, kind=None, partial=False, strict_class_heads=None,
                 rpn_min_level=None):
    """Load the weights file ``path`` into ``model``: the one loader of every tool and of
    training. Returns the names of the parameters loaded.

    ``kind``: 'checkpoint' (a ``.pth`` of this project or of Detectron.pytorch, legacy or zip
    format: what ``--load_ckpt`` names), 'detectron' (a Detectron ``.pkl``: ``--load_detectron``)
    or None to recognise the file (``register_weights_format`` adds formats).
    ``partial`` (TRAIN.WEIGHTS, Detectron's rule): parameters whose blob the file lacks keep their
    initialisation; otherwise every parameter must be in the file.
    ``strict_class_heads``: None (inference, the default) loads exactly: class-specific layers
    of another shape are a mismatch like any other; False (training: fine-tuning to another
    class count) skips them with a warning naming them; True (training with
    ``--strict_class_heads``) refuses them, naming them.
    ``rpn_min_level`` (Detectron.pytorch's FPN names) defaults to cfg.FPN.RPN_MIN_LEVEL.
    A file that cannot be used -- missing, empty, truncated, unsafe, of another architecture (the
    first mismatched keys and shapes are named), a Detectron file lacking a blob or with other
    shapes -- raises a one-line ``CheckpointError`` naming ``flag`` and the file.
    """
    who = '{} {}'.format(flag, path) if flag else path
    if kind not in (None, 'checkpoint', 'detectron'):
        raise ValueError('load_weights: unknown kind {!r}'.format(kind))
    _check_file(path, who)
    if kind is None:
        for name, accepts, load in _WEIGHTS_FORMATS:
            if accepts(path):
                if load is not None:
                    return load(model, path, flag)
                kind = _BUILT_IN_KIND[name]
                break
        else:
            raise CheckpointError('{}: neither a torch checkpoint (.pth) nor a Detectron pickle '
                                  '(.pkl)'.format(who))
    if rpn_min_level is None:
        from pydetectron.core.config import cfg
        rpn_min_level = cfg.FPN.RPN_MIN_LEVEL
    model = unwrap_model(model)
    data_kind, data, _ = read_weights(path, rpn_min_level, flag, kind=kind)
    fine_tune = strict_class_heads is not None
    if data_kind == 'blobs':
        from pydetectron.utils.detectron_weight_helper import _source_name
        skip = set()
        if fine_tune:
            skip = _handle_mismatches(
                class_head_mismatches(model, shapes_by_blob={b: a.shape for b, a in data.items()}),
                who, strict_class_heads)
        skip_blobs = {b for n, _, b in detectron_blobs_of(model) if n in skip}

        def wanted(blob):
            return blob not in skip_blobs and not (partial and _source_name(blob, data) is None)
        report = load_detectron_blobs(model, data, who, blob_filter=wanted)
        if partial:
            missing = [n for n in report.skipped if n not in skip]
            if missing:
                logger.info('%s: %d parameters are not in the file and keep their '
                            'initialisation (e.g. %s)', path, len(missing),
                            ', '.join(missing[:3]))
        if not report.loaded:
            raise CheckpointError('{}: no parameter of this model is in the file (a model of '
                                  'another kind?)'.format(who))
        return set(report.loaded)
    skip = set()
    if fine_tune:
        skip = _handle_mismatches(class_head_mismatches(model, state_dict=data), who,
                                  strict_class_heads)
    own = model.state_dict()
    state = {k: (own[k] if k in skip else v) for k, v in data.items()}
    if partial:
        missing = [k for k in own if k not in state]
        state.update({k: own[k] for k in missing})
        state = {k: v for k, v in state.items() if k in own}
    load_model_state(model, state, source=who)
    return {k for k in data if k in own and k not in skip}


# ---------------------------------------------------------------------------------------------- #
# Frozen BN from random weights
# ---------------------------------------------------------------------------------------------- #

def body_uses_frozen_bn(model):
    """True when the model's body normalises with AffineChannel (frozen BN)."""
    from pydetectron.nn.affine import AffineChannel2d
    body = getattr(unwrap_model(model), 'Conv_Body', None)
    return body is not None and any(isinstance(m, AffineChannel2d) for m in body.modules())


def random_frozen_bn_body(model, loaded_names):
    """True when the body uses frozen BN and none of its weights came from a file."""
    return body_uses_frozen_bn(model) and not any(n.startswith('Conv_Body.')
                                                  for n in loaded_names)


def check_frozen_bn_initialised(model, loaded_names, allow=False):
    """Refuse to train a frozen-BN body none of whose weights came from a file."""
    if allow or not random_frozen_bn_body(model, loaded_names):
        return
    from pydetectron.core.config import ConfigValueError, cfg
    raise ConfigValueError(
        'MODEL.CONV_BODY {} uses frozen BatchNorm (AffineChannel), which cannot learn, and no '
        'weights initialise it: name TRAIN.WEIGHTS (e.g. an ImageNet R-50.pkl), pass --load_ckpt '
        '/ --load_detectron, or set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS with '
        'RESNETS.IMAGENET_PRETRAINED_WEIGHTS; use a GroupNorm body to train from scratch; or '
        'pass --allow_random_frozen_bn (TRAIN.ALLOW_RANDOM_FROZEN_BN True) if this is '
        'meant'.format(cfg.MODEL.CONV_BODY))
