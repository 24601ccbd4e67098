"""Reading pickles that came from elsewhere, and writing files that never end up half-written.

Every ``*.pkl`` the package reads -- Detectron weights (``model_final.pkl``, ``R-50.pkl``),
proposal files, detections / results files -- goes through ``load_pickle_safe``. A pickle may
name any importable global and call it (``os.system``, ``builtins.eval``, a module whose import
has side effects), so ``SafeUnpickler.find_class`` resolves names from a fixed table of
numpy's array / dtype / scalar reconstruction and a few builtin types, *without importing
anything the file names*, and refuses everything else with ``UnsafePickleError`` naming the file
and the refused global. Nothing in the file runs before the refusal.

PyTorch checkpoints (``*.pth``) are not read here: ``engine.checkpoint`` reads them with
``torch.load(weights_only=True)``, PyTorch's own allow-list.

``atomic_write`` / ``atomic_pickle_dump``: write to a temporary file in the same folder, flush to
disk, then ``os.replace`` -- a crash or ``kill -9`` mid-write leaves the previous file intact.
"""
import codecs
import contextlib
import copyreg
import os
import pickle
import tempfile
from collections import OrderedDict

import numpy as np

from pydetectron.utils.errors import UserInputError

__all__ = ['UnsafePickleError', 'SafeUnpickler', 'load_pickle_safe', 'atomic_write',
           'atomic_pickle_dump']


class UnreadablePickleError(UserInputError, pickle.UnpicklingError):
    """A pickle file that is truncated or not a pickle at all (named in the message)."""


class UnsafePickleError(UserInputError, pickle.UnpicklingError):
    """A pickle that would run code (or build objects other than arrays) when unpickled."""


def _first_importable(*names):
    import importlib
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError('none of %s is importable' % (names,))


def _latin1_encode(obj, encoding='latin1'):
    """``_codecs.encode`` restricted to the use Python 3 protocol-2 pickles make of it: turning
    latin-1 text back into ``bytes``."""
    if codecs.lookup(encoding).name != 'iso8859-1' or not isinstance(obj, str):
        raise UnsafePickleError('refused _codecs.encode(%s, %r): only latin-1 text is allowed'
                                % (type(obj).__name__, encoding))
    return codecs.encode(obj, 'latin1')


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (Python 2 pickles of plain objects); ``cls`` and ``base`` were
    themselves resolved through the allow-list, so this builds only allowed types."""
    return copyreg._reconstructor(cls, base, state)


def _allowed_globals():
    """{(module, name): object}. numpy moved ``core`` to ``_core`` in 2.0; files name either."""
    multiarray = _first_importable('numpy._core.multiarray', 'numpy.core.multiarray')
    numeric = _first_importable('numpy._core.numeric', 'numpy.core.numeric')
    table = {}
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        table[(mod, '_reconstruct')] = multiarray._reconstruct
        table[(mod, 'scalar')] = multiarray.scalar
    for mod in ('numpy.core.numeric', 'numpy._core.numeric'):
        table[(mod, '_frombuffer')] = numeric._frombuffer
    table[('numpy', 'ndarray')] = np.ndarray
    table[('numpy', 'dtype')] = np.dtype
    for mod in ('builtins', '__builtin__'):
        for obj in (set, frozenset, bytearray, complex, slice, list, dict, object):
            table[(mod, obj.__name__)] = obj
    table[('collections', 'OrderedDict')] = OrderedDict
    table[('_codecs', 'encode')] = _latin1_encode
    for mod in ('copyreg', 'copy_reg'):
        table[(mod, '_reconstructor')] = _reconstructor
    return table


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that builds numpy arrays and builtin containers / scalars and nothing else.

    ``source`` names the file in error messages; ``what`` says what kind of file it is
    ("a weights file", "a proposal file", ...).
    """

    _allowed = None

    def __init__(self, file, source='<pickle>', what='a pickle', **kwargs):
        super().__init__(file, **kwargs)
        self.source = source
        self.what = what
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _allowed_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                'refusing to load %s: it references the global %s.%s, which %s has no reason to '
                'contain (only numpy arrays, dtypes and builtin containers/scalars are allowed); '
                'loading it could execute code' % (self.source, module, name, self.what))
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError('refusing to load %s: it uses persistent ids, which %s has no '
                                'reason to contain' % (self.source, self.what))


def load_pickle_safe(path, what='a pickle', encoding='latin1'):
    """The object pickled in ``path``, read by ``SafeUnpickler``.

    ``encoding='latin1'`` reads Python 2 pickles (Detectron's) with their numpy arrays intact.
    Raises ``UnsafePickleError`` for a file that names a global outside the allow-list and
    ``pickle.UnpicklingError`` naming ``path`` for a truncated file or one that is no pickle.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        try:
            return SafeUnpickler(f, source=path, what=what, encoding=encoding).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated, or not a pickle at all
            raise UnreadablePickleError('could not read %s (%s; truncated, or not a pickle?): '
                                        '%s: %s' % (path, what, type(e).__name__, e)) from e


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` holds either its old content or
    the complete new one, never a part (temporary file in the same folder, fsync, rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_pickle_dump(obj, path, protocol=4):
    """Pickle ``obj`` to ``path`` atomically. Protocol 4 writes numpy arrays through
    ``_reconstruct``, which ``load_pickle_safe`` accepts."""
    with atomic_write(path) as f:
        pickle.dump(obj, f, protocol=protocol)
