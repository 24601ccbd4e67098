"""Detectron ``*.pkl`` weights in and out.

A Detectron weights file is a pickled dict of numpy arrays keyed by Caffe2 blob name: either
``{'blobs': {name: array}, 'cfg': yaml}`` (``model_final.pkl``, Detectron's checkpoints) or a flat
``{name: array}`` (the ImageNet backbones ``R-50.pkl`` ...), written by Python 2 with protocol 2 --
hence ``encoding='latin1'`` when reading. Besides the parameters they may hold ``<blob>_momentum``
(SGD history), blobs a model preserved without using, and the ImageNet classifier; these are
ignored.

**Loading never executes code from the file.** A pickle may name any global function and call it;
``SafeUnpickler`` resolves only numpy's array / dtype / scalar reconstruction and a few builtin
types, each from a fixed table (no module named by the file is imported), and refuses everything
else with ``UnsafePickleError`` naming the file and the refused global.

Each part of a model states its blob names in ``detectron_weight_mapping()`` (see
``pydetectron.modeling.weight_mapping``); ``load_detectron_weight`` fills every parameter (and
persistent buffer) from its blob, and ``save_detectron_weight`` writes them back in Detectron's own
format (protocol 2, numpy 1.x global names, raw Python-2 strings), so files round-trip bit-exactly
and load in Detectron.
"""
import logging
import os
import pickle
from collections import namedtuple

import numpy as np
import torch

from pydetectron.utils.errors import CheckpointError, WeightsMismatchError
from pydetectron.utils.io import (  # noqa: F401 (SafeUnpickler, UnsafePickleError re-exported)
    SafeUnpickler, UnsafePickleError, _first_importable)

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "SafeUnpickler", "load_detectron_pkl", "load_detectron_weight",
           "save_detectron_weight", "load_detectron_blobs", "detectron_blobs_of", "LoadReport",
           "CLASS_HEAD_BLOBS"]

# Blobs whose shape depends on the number of classes (or keypoints): skipped on request when
# fine-tuning a trained model on another dataset.
CLASS_HEAD_BLOBS = ("cls_score", "bbox_pred", "mask_fcn_logits", "mask_fcn_logits_up",
                    "kps_score_lowres", "kps_score")

# Suffixes of blobs that Detectron files carry but that are not parameters of the model: SGD
# momentum and BN running statistics (some ImageNet files keep them; Detectron ignores them too).
_IGNORED_SUFFIXES = ("_momentum", "_bn_rm", "_bn_riv")


class UnreadableWeightsError(CheckpointError, pickle.UnpicklingError):
    """A weights file that is truncated or not a pickle."""


# Problems named in a mismatch message (the rest are counted): the message stays one line.
_MAX_LISTED = 5


def load_detectron_pkl(path):
    """The {blob name: numpy array} dict of a Detectron ``*.pkl`` (the 'blobs' entry if present).

    Non-array entries (the 'cfg' yaml, None placeholders) are dropped.
    """
    with open(path, "rb") as f:
        try:
            data = SafeUnpickler(f, source=path, what="a weights file", encoding="latin1").load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise UnreadableWeightsError("could not read Detectron weights from %s (truncated, or "
                                         "not a pickle?): %s: %s"
                                         % (path, type(e).__name__, e)) from e
    if not isinstance(data, dict):
        raise WeightsMismatchError("%s: expected a pickled dict of blobs, got %s"
                                   % (path, type(data).__name__))
    if "blobs" in data:
        data = data["blobs"]
        if not isinstance(data, dict):
            raise WeightsMismatchError("%s: the 'blobs' entry is a %s, expected a dict of numpy "
                                       "arrays" % (path, type(data).__name__))
    return {k: v for k, v in data.items() if isinstance(v, np.ndarray)}


def detectron_blobs_of(model):
    """[(state-dict name, tensor, blob name)] for every parameter and persistent buffer of ``model``.

    Shared tensors (e.g. the res5 stage a C4 mask head shares with the box head) appear once.
    """
    mapping, _ = model.detectron_weight_mapping()
    out, seen = [], set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if name not in mapping:
            raise KeyError("%s.detectron_weight_mapping() has no blob name for %r"
                           % (type(model).__name__, name))
        if mapping[name] is not None:
            out.append((name, tensor, mapping[name]))
    return out


LoadReport = namedtuple("LoadReport", ["loaded", "skipped", "unused_blobs"])


def _source_name(blob, blobs):
    """The file's blob for ``blob``: itself, or for '_[xyz]_foo' Detectron's fallback 'foo'."""
    if blob in blobs:
        return blob
    if blob.startswith("_[") and "]_" in blob:
        # Detectron (utils/net.py): a '_[mask]_res5_...' parameter missing from the file is
        # initialised from 'res5_...' (e.g. a mask head's res5 from ImageNet or a box model).
        stripped = blob[blob.index("]_") + 2:]
        if stripped in blobs:
            return stripped
    return None


def _is_class_head(blob):
    base = blob.rsplit("_", 1)[0]
    # RetinaNet's classifier is named after its finest level (retnet_cls_pred_fpn3)
    return base in CLASS_HEAD_BLOBS or base.startswith("retnet_cls_pred_fpn")


def load_detectron_weight(model, path, skip_class_heads=False, blob_filter=None):
    """Load the Detectron weights file ``path`` into ``model`` (any module with a
    ``detectron_weight_mapping()``). Returns a ``LoadReport``.

    Every parameter must find its blob with the same shape; a missing blob or a shape mismatch
    raises one ``ValueError`` listing each blob, parameter and both shapes. Persistent buffers (the
    fixed bilinear upsampling kernels) load when the file has them and keep their value otherwise.
    ``skip_class_heads=True`` leaves the class-dependent layers (``CLASS_HEAD_BLOBS``) at their
    initialisation, for fine-tuning on another number of classes. ``blob_filter(blob) -> bool``
    restricts loading to the parameters whose blob it accepts (e.g. the backbone, for ImageNet
    weights). Blobs of the file left unused (other than momentum, BN statistics and the blobs the
    model declares as orphans) are listed in the report and logged.
    """
    return load_detectron_blobs(model, load_detectron_pkl(path), path, skip_class_heads,
                                blob_filter)


def load_detectron_blobs(model, blobs, source="<blobs>", skip_class_heads=False, blob_filter=None):
    """``load_detectron_weight`` from a {blob name: numpy array} dict already in memory."""
    _, orphans = model.detectron_weight_mapping()
    problems, loaded, skipped, used = [], [], [], set()
    assignments = []
    for name, tensor, blob in detectron_blobs_of(model):
        if blob_filter is not None and not blob_filter(blob):
            skipped.append(name)
            continue
        if skip_class_heads and _is_class_head(blob):
            skipped.append(name)
            continue
        src = _source_name(blob, blobs)
        if src is None and not isinstance(tensor, torch.nn.Parameter):
            # A fixed buffer (the bilinear upsampling kernels): Detectron files carry it as a
            # blob, but nothing is lost when one lacks it.
            skipped.append(name)
            continue
        if src is None:
            problems.append("blob %s (for parameter %s, shape %s) is missing from the file"
                            % (blob, name, tuple(tensor.shape)))
            continue
        array = blobs[src]
        if tuple(array.shape) != tuple(tensor.shape):
            problems.append("blob %s has shape %s in the file but parameter %s has shape %s"
                            % (src, tuple(array.shape), name, tuple(tensor.shape)))
            continue
        assignments.append((tensor, array))
        used.add(src)
        loaded.append(name)
    if problems:
        hint = "" if skip_class_heads else (
            " (to fine-tune on another number of classes, pass skip_class_heads=True)")
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        raise WeightsMismatchError("cannot load Detectron weights %s into %s: %s%s%s"
                                   % (source, type(model).__name__, "; ".join(shown),
                                      "; ... and %d more" % more if more else "", hint))
    with torch.no_grad():
        for tensor, array in assignments:
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    unused = sorted(b for b in blobs if b not in used and b not in orphans
                    and not b.endswith(_IGNORED_SUFFIXES))
    logger.info("Loaded %d tensors from %s (%d skipped)", len(loaded), source, len(skipped))
    if unused:
        logger.info("Blobs of %s not used by the model: %s", source, ", ".join(unused))
    return LoadReport(loaded, skipped, unused)


# ---------------------------------------------------------------------------------------------- #
# Writing
# ---------------------------------------------------------------------------------------------- #

def _numpy_global_aliases():
    """numpy objects -> the (module, name) numpy 1.x (and Detectron's Python 2) imports them by."""
    multiarray = _first_importable("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = _first_importable("numpy._core.numeric", "numpy.core.numeric")
    return {id(multiarray._reconstruct): ("numpy.core.multiarray", "_reconstruct"),
            id(multiarray.scalar): ("numpy.core.multiarray", "scalar"),
            id(numeric._frombuffer): ("numpy.core.numeric", "_frombuffer")}


class _DetectronPickler(pickle._Pickler):
    """Protocol-2 pickler writing what Python 2's cPickle wrote for Detectron: numpy globals under
    ``numpy.core`` (numpy 2 says ``numpy._core``, which numpy 1.x cannot import), and raw bytes and
    ASCII text as Python-2 strings (BINSTRING; Python 3 would write ``_codecs.encode`` calls and
    unicode)."""

    _aliases = None

    def __init__(self, file):
        super().__init__(file, protocol=2)
        if _DetectronPickler._aliases is None:
            _DetectronPickler._aliases = _numpy_global_aliases()

    def save_global(self, obj, name=None):
        alias = self._aliases.get(id(obj))
        if alias is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + ("%s\n%s\n" % alias).encode("ascii"))
        self.memoize(obj)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    def save_str(self, obj):
        # ASCII text (blob names, dtype codes) as Python-2 str, as cPickle wrote it; Python 3
        # reads it back as str with encoding='latin1'. Other text stays unicode.
        if obj.isascii():
            return self.save_bytes(obj.encode("ascii"))
        return super().save_str(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def save_detectron_weight(model, path):
    """Write ``model``'s parameters to ``path`` as Detectron's ``{'blobs': {name: float32 array}}``.

    Written to a temporary file first and renamed, so a crash never leaves half a file.
    """
    blobs = {}
    for name, tensor, blob in detectron_blobs_of(model):
        if blob in blobs:
            raise ValueError("two tensors map to the Detectron blob %s (the second is %s)"
                             % (blob, name))
        blobs[blob] = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            _DetectronPickler(f).dump({"blobs": blobs})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("Saved %d blobs to %s", len(blobs), path)
    return sorted(blobs)
