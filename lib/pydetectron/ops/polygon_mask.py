"""Mask R-CNN's mask targets in one op: each box gets its object's polygons rasterized inside it.

``polygon_masks_in_boxes(xy, poly_starts, poly_lengths, group_first, group_count, boxes, group,
resolution)`` -> (R, M, M) bool. Box r gets the polygons of object ``group[r]``, mapped into the
box's M x M frame as Detectron's ``polys_to_mask_wrt_box`` does and rasterized as pycocotools does
(``frPyObjects([poly], M, M)`` + ``decode``), the object's polygons OR-ed. One kernel launch (CPU:
boxes in parallel; CUDA: one block per box) and, on CUDA, no host synchronisation: it replaces the
few hundred small torch ops of the pure-torch path (``modeling/targets/rasterize.py``, which stays
as the reference and the fallback when the extension is not built).

Shapes (M = resolution):
    xy            (V, 2) float32  polygon vertices (x, y), the polygons stored one after the other
    poly_starts   (P,) int64      first vertex of each polygon
    poly_lengths  (P,) int64      vertex count of each polygon
    group_first   (Q,) int64      first polygon of each object (an object's polygons are stored
    group_count   (Q,) int64      contiguously) and how many it has
    boxes         (R, 4) float32  (x1, y1, x2, y2) in the frame of ``xy``
    group         (R,) int64      the object of box r; a value outside [0, Q) (e.g. -1) marks an
                                  unmatched box, whose mask is all zero (no error)
    output        (R, M, M) bool

Exactness contract: the output equals, bit for bit, the pure-torch path (and so pycocotools):
in float32, x' = (x - x1) * M / max(x2 - x1, 1) and y' = (y - y1) * M / max(y2 - y1, 1) (that
evaluation order), then pycocotools' ``rleFrPoly`` in double precision -- vertices snapped with
C's ``(int)(5 * c + .5)``, the edge walk's rounded points, a column toggled where the walk crosses
the upsampled x 5k+2 | 5k+3 at row ``ceil(clamp((v + .5) / 5 - .5, 0, M))``, the parity down each
column. The CUDA kernel rounds every product and sum on its own (no fused multiply-add), so CPU
and CUDA agree bit for bit. Each (edge, column) crossing is computed in closed form, so polygons
far outside a small box cost no more than M columns per edge.

Bad index ranges (a polygon not inside ``xy``, an object's polygons not inside the P polygons)
raise on the CPU; the CUDA kernel cannot raise without a synchronisation and skips them. On CUDA
the resolution is limited to 438 (the kernel's bitsets live in 48 KiB of shared memory).
"""
import operator

import torch

from pydetectron.ops import _ext

_OP = "polygon_masks_in_boxes"


def _check_tensor(t, name, dtype, shape_text, ndim, size=None, size_name=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s: `%s` must be a tensor, got %s" % (_OP, name, type(t).__name__))
    if t.dtype != dtype:
        raise TypeError("%s: `%s` must be %s, got %s"
                        % (_OP, name, str(dtype).replace('torch.', ''), t.dtype))
    if t.dim() != ndim or (size is not None and t.size(0) != size):
        extra = " with %s = %d" % (size_name, size) if size is not None else ""
        raise ValueError("%s: `%s` must have shape %s%s, got %s"
                         % (_OP, name, shape_text, extra, tuple(t.shape)))
    if device is not None and t.device != device:
        raise ValueError("%s: `%s` is on %s but `boxes` is on %s; all inputs must be on one "
                         "device" % (_OP, name, t.device, device))


def _check_arguments(xy, poly_starts, poly_lengths, group_first, group_count, boxes, group,
                     resolution):
    _check_tensor(boxes, "boxes", torch.float32, "(R, 4) = (x1, y1, x2, y2)", 2)
    if boxes.size(1) != 4:
        raise ValueError("%s: `boxes` must have shape (R, 4) = (x1, y1, x2, y2), got %s"
                         % (_OP, tuple(boxes.shape)))
    dev = boxes.device
    _check_tensor(xy, "xy", torch.float32, "(V, 2) = polygon vertices (x, y)", 2, device=dev)
    if xy.size(1) != 2:
        raise ValueError("%s: `xy` must have shape (V, 2) = polygon vertices (x, y), got %s"
                         % (_OP, tuple(xy.shape)))
    _check_tensor(poly_starts, "poly_starts", torch.int64, "(P,)", 1, device=dev)
    _check_tensor(poly_lengths, "poly_lengths", torch.int64, "(P,)", 1, poly_starts.size(0), "P",
                  device=dev)
    _check_tensor(group_first, "group_first", torch.int64, "(Q,)", 1, device=dev)
    _check_tensor(group_count, "group_count", torch.int64, "(Q,)", 1, group_first.size(0), "Q",
                  device=dev)
    _check_tensor(group, "group", torch.int64, "(R,)", 1, boxes.size(0), "R", device=dev)
    try:
        m = operator.index(resolution)
    except TypeError:
        raise TypeError("%s: `resolution` must be an int, got %s"
                        % (_OP, type(resolution).__name__)) from None
    if isinstance(resolution, bool) or m < 1:
        raise ValueError("%s: `resolution` must be an int >= 1, got %r" % (_OP, resolution))
    return m


def polygon_masks_in_boxes(xy, poly_starts, poly_lengths, group_first, group_count, boxes, group,
                           resolution):
    """(R, M, M) bool: box r's mask of the polygons of object ``group[r]`` (see the module)."""
    _ext.load()
    m = _check_arguments(xy, poly_starts, poly_lengths, group_first, group_count, boxes, group,
                         resolution)
    return torch.ops.pydetectron.polygon_masks_in_boxes(xy, poly_starts, poly_lengths,
                                                        group_first, group_count, boxes, group, m)


def has_kernel_for(device):
    """True when the built extension has a kernel of this op for ``device`` (cpu / cuda)."""
    return _ext.has_kernel(_OP, device)


def _register():
    """The fake kernel for the C++ op (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::" + _OP)
    def _polygon_masks_in_boxes_fake(xy, poly_starts, poly_lengths, group_first, group_count,
                                     boxes, group, resolution):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                     lambda: "%s: `boxes` must have shape (R, 4)" % _OP)
        torch._check(resolution >= 1, lambda: "%s: `resolution` must be >= 1" % _OP)
        return boxes.new_empty((boxes.size(0), resolution, resolution), dtype=torch.bool)
