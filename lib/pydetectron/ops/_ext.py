"""Loads the compiled extension ``pydetectron._C`` that registers the ``torch.ops.pydetectron`` ops.

The config and data code import without it; calling an op without it raises one clear message.
Loading also registers the Python halves of the ops (autograd formulas and the fake kernels that
let ``torch.compile`` trace them), once.
"""
import importlib

_MISSING_MSG = (
    "pydetectron's compiled ops (pydetectron._C) are not built or failed to load{detail}. "
    "Run `bash make.sh` in the pydetectron checkout to build them.")

# The op modules whose `_register()` adds autograd and fake kernels to the C++ ops.
_PYTHON_HALVES = ("roi_align", "roi_align_fpn", "roi_pool", "nms", "soft_nms", "polygon_mask",
                  "box_iou_batched", "paste_mask", "group_norm")

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
    for name in _PYTHON_HALVES:
        importlib.import_module("pydetectron.ops." + name)._register()


def available():
    try:
        load()
    except RuntimeError:
        return False
    return True


_kernels = {}   # (op name, device type) -> has a kernel; fixed once the extension is loaded


def has_kernel(op, device):
    """True when the loaded extension has a kernel of ``pydetectron::<op>`` for ``device`` (a
    torch.device or its name; cpu or cuda). Cheap after the first query: the ops' callers ask on
    every step."""
    import torch
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    found = _kernels.get((op, kind))
    if found is None:
        if not available():
            return False
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(kind)
        found = key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
            "pydetectron::" + op, key)
        _kernels[(op, kind)] = found
    return found


def has_cuda_kernels():
    """True when the extension was built with its CUDA kernels (and CUDA is usable)."""
    import torch
    return torch.cuda.is_available() and has_kernel("roi_align", "cuda")
