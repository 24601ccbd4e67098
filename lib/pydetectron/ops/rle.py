"""COCO's compressed RLE strings of binary masks from where each flattened mask changes value: the
host end of the test path's mask encoding (``core.mask_results.encode_masks`` finds the changes
on the device and copies only them).

``rle_from_changes(first, changes, height, width)`` -> a list of D ``bytes``, each the
``'counts'`` string pycocotools' ``mask.encode`` gives for that mask. One C++ call (CPU only)
instead of per-mask run-length arrays handed to ``pycocotools.mask.frPyObjects``, which stays as
the fallback when the extension is not built.

    first     (D,) bool            each mask's first pixel (column-major: pixel (0, 0))
    changes   (K, 2) int32/int64   rows (mask, p): pixels p and p + 1 of that column-major
                                   flattened mask differ, 0 <= p < height * width - 1; sorted by
                                   mask, then p (``torch.nonzero`` of the differences gives them so)
Rows out of order or out of range raise.
"""
import torch

from pydetectron.ops import _ext

_OP = "rle_from_changes"


def rle_from_changes(first, changes, height, width):
    """D COCO RLE 'counts' strings (bytes); see the module docstring."""
    _ext.load()
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("%s: `%s` must be an int >= 1, got %r" % (_OP, name, v))
    chars, offsets = torch.ops.pydetectron.rle_from_changes(first, changes, height, width)
    buf = chars.numpy().tobytes()
    ends = offsets.tolist()
    return [buf[a:b] for a, b in zip(ends[:-1], ends[1:])]


def has_kernel():
    """True when the built extension has this op (a CPU kernel)."""
    return _ext.has_kernel(_OP, "cpu")
