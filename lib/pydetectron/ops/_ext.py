"""Loads the compiled extension ``pydetectron._C`` that registers the ``torch.ops.pydetectron`` ops.

The config and data code import without it; calling an op without it raises one clear message.
"""
import importlib

_MISSING_MSG = (
    "pydetectron's compiled ops (pydetectron._C) are not built or failed to load{detail}. "
    "Run `bash make.sh` in the pydetectron checkout to build them.")

_state = {"loaded": False, "error": None}


def load():
    """Import ``pydetectron._C`` once (registering its ops); raise a clear error if it is missing."""
    if _state["loaded"]:
        return
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)
        importlib.import_module("pydetectron._C")
    except (ImportError, OSError) as e:
        _state["error"] = e
        raise RuntimeError(_MISSING_MSG.format(detail=": %s" % e)) from e
    _state["loaded"] = True


def available():
    try:
        load()
    except RuntimeError:
        return False
    return True
