"""Detectron's ``segm_results`` on the device: soft masks pasted into the image, thresholded and
run-length encoded, with only the runs copied to the host.

Shapes: D detections of one image, M = MRCNN.RESOLUTION, an image of H x W pixels.

Detectron's rule (``core/test.py`` ``segm_results``), kept exactly:
1. each (M, M) soft mask is zero-padded to (M + 2, M + 2) and its box expanded about its centre by
   (M + 2) / M in float32, then truncated to integers (x0, y0, x1, y1);
2. the padded mask is resized bilinearly (OpenCV's ``cv2.resize``: half-pixel centres, the border
   replicated) to the box's w = x1 - x0 + 1 by h = y1 - y0 + 1 pixels (at least 1 each);
3. pixels > ``MRCNN.THRESH_BINARIZE`` are set, inside the part of the box within the image;
4. the H x W mask is run-length encoded in column-major order (COCO's RLE).

Steps 1-3 are one op, ``pydetectron.ops.paste_masks_in_image`` (a thread per pixel on CUDA; its
arithmetic, each product and sum rounded on its own, in its docstring), whose output is already
column-major per mask. Without the built op (or its kernel for the device) they are two batched
matrix products per chunk of detections, ``Ay @ P @ Ax^T``, where each row of the (w-wide)
horizontal and (h-tall) vertical interpolation matrices holds OpenCV's two bilinear weights for
that output pixel (and is zero outside the box): the products sum the same two terms per pass
that ``cv2.resize`` sums, horizontally then vertically. Step 4 finds the positions where each
flattened mask changes value on the device; the host turns those positions into COCO's compressed
strings (``ops.rle_from_changes``, one C++ call; without it, run lengths that pycocotools
compresses), the same strings as ``mask.encode``.

The bilinear weights follow OpenCV's float32 arithmetic: source coordinate
``float((x + 0.5) * scale - 0.5)`` with ``scale = 1 / (w / (M + 2))`` in float64, its floor as the
left tap and the fraction as the right tap's weight, both clamped at the border. Matrix products
may fuse a multiply with the add (one rounding instead of two), and OpenCV's resize rounds in its
own way, so a pixel whose value is within one float32 step of the threshold can come out
differently from OpenCV's: the tests allow at most 2 differing pixels per million
(``tests/core/test_mask_results.py``; the op measured 3 in 126 million against Detectron's cv2
loop on random masks and boxes).
"""
import threading

import numpy as np
import pycocotools.mask as mask_util
import torch

from pydetectron import ops
from pydetectron.ops import paste_mask as paste_mask_op
from pydetectron.ops import rle as rle_op
from pydetectron.utils import boxes as box_utils

__all__ = ['paste_boxes', 'paste_masks', 'encode_masks', 'segm_results']

# Elements of one chunk's (D_chunk, H, W) float32 product: 32M = 128 MB.
_CHUNK_ELEMS = 1 << 25


def paste_boxes(ref_boxes, resolution):
    """(D, 4) detection boxes (float, image pixels) -> (D, 4) int64 pasting boxes x0, y0, x1, y1:
    expanded by (M + 2) / M in float32 and truncated, as Detectron does (numpy, on the host)."""
    boxes = np.asarray(ref_boxes, dtype=np.float32).reshape(-1, 4)
    scale = (resolution + 2.0) / resolution
    return box_utils.expand_boxes(boxes, scale).astype(np.int32).astype(np.int64)


def _interp_matrix(starts, lengths, extents, src_size, out_size, device):
    """(D, out_size, src_size) float32: row p of detection d holds cv2.resize's bilinear weights
    of output pixel p - starts[d] of a ``src_size`` -> ``lengths[d]`` resize, zero outside the
    first ``extents[d]`` (<= lengths[d]; x1 - x0 + 1, which is < 1 for a box that Detectron's
    slices leave empty) pixels."""
    starts = torch.as_tensor(starts, dtype=torch.int64, device=device).view(-1, 1)
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device).view(-1, 1)
    extents = torch.as_tensor(extents, dtype=torch.int64, device=device).view(-1, 1)
    pos = torch.arange(out_size, device=device, dtype=torch.int64).view(1, -1) - starts  # (D, n)
    inside = (pos >= 0) & (pos < extents)
    # OpenCV: scale = 1 / inv_scale (float64); f = float32((dst + 0.5) * scale - 0.5)
    scale = 1.0 / (lengths.to(torch.float64) / float(src_size))
    f = ((pos.to(torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    left = torch.floor(f)
    frac = f - left
    left = left.to(torch.int64)
    low = left < 0
    high = left >= src_size - 1
    frac = torch.where(low | high, torch.zeros_like(frac), frac)
    left = torch.where(low, torch.zeros_like(left), left)
    left = torch.where(high, torch.full_like(left, src_size - 1), left)
    right = torch.clamp(left + 1, max=src_size - 1)
    w_left = torch.where(inside, 1.0 - frac, torch.zeros_like(frac))
    w_right = torch.where(inside, frac, torch.zeros_like(frac))
    mat = torch.zeros(starts.shape[0], out_size, src_size, dtype=torch.float32, device=device)
    mat.scatter_add_(2, left.unsqueeze(2), w_left.unsqueeze(2))
    mat.scatter_add_(2, right.unsqueeze(2), w_right.unsqueeze(2))
    return mat


class _NoTF32(object):
    """TF32 matrix products off while any thread is inside (threads may post-process batches at
    once: test_engine._detections with several pipelines, or a user's own threads): the first to
    enter saves the user's setting, the last to leave restores it. The setting is global, so
    while a thread is inside, the other threads' float32 products also run in full precision
    (the default setting, TF32 off, is never changed)."""
    _lock = threading.Lock()
    _inside = 0
    _saved = None

    def __enter__(self):
        with self._lock:
            cls = type(self)
            if cls._inside == 0:
                cls._saved = torch.backends.cuda.matmul.allow_tf32
                if cls._saved:
                    torch.backends.cuda.matmul.allow_tf32 = False
            cls._inside += 1

    def __exit__(self, *exc):
        with self._lock:
            cls = type(self)
            cls._inside -= 1
            if cls._inside == 0 and cls._saved:
                torch.backends.cuda.matmul.allow_tf32 = True


def _exact_bmm(a, b):
    """a @ b in full float32 (no TF32, whatever the global setting)."""
    if a.is_cuda:
        with _NoTF32():
            return torch.bmm(a, b)
    return torch.bmm(a, b)


def paste_masks(masks, boxes, im_h, im_w, thresh=0.5):
    """(D, M, M) soft masks and (D, 4) int pasting boxes (``paste_boxes``) -> (D, H, W) bool.

    ``masks`` may live on any device; the result is on the same device (with the built op, a
    transposed view of column-major storage, as ``encode_masks`` reads it).
    """
    masks = torch.as_tensor(masks)
    device = masks.device
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if paste_mask_op.has_kernel_for(device):
        return ops.paste_masks_in_image(
            masks.to(torch.float32), torch.from_numpy(boxes).to(device, non_blocking=True),
            int(im_h), int(im_w), float(thresh))
    d, m = masks.shape[0], masks.shape[-1]
    out = torch.zeros((d, im_h, im_w), dtype=torch.bool, device=device)
    if d == 0:
        return out
    # x1 - x0 + 1 (< 1 for a box that Detectron's slices leave empty) and the resize's size
    extents_x, extents_y = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    widths, heights = np.maximum(extents_x, 1), np.maximum(extents_y, 1)
    padded = torch.zeros((d, m + 2, m + 2), dtype=torch.float32, device=device)
    padded[:, 1:-1, 1:-1] = masks.to(torch.float32)
    chunk = max(1, _CHUNK_ELEMS // max(1, im_h * im_w))
    for lo in range(0, d, chunk):
        hi = min(lo + chunk, d)
        ax = _interp_matrix(boxes[lo:hi, 0], widths[lo:hi], extents_x[lo:hi], m + 2, im_w,
                            device)                                           # (c, W, M+2)
        ay = _interp_matrix(boxes[lo:hi, 1], heights[lo:hi], extents_y[lo:hi], m + 2, im_h,
                            device)                                           # (c, H, M+2)
        rows = _exact_bmm(padded[lo:hi], ax.transpose(1, 2))         # horizontal: (c, M+2, W)
        out[lo:hi] = _exact_bmm(ay, rows) > thresh                    # vertical: (c, H, W)
    return out


def encode_masks(binary):
    """(D, H, W) bool masks (any device) -> D COCO RLEs (dicts of 'size' and 'counts' bytes),
    as ``pycocotools.mask.encode`` gives them. Only the positions where each column-major
    flattened mask changes value come to the host."""
    d, h, w = binary.shape
    if d == 0:
        return []
    flat = binary.transpose(1, 2).reshape(d, h * w)                    # column-major per mask
    # (the first pixels' copy needs no wait of its own: nonzero's count, read next, waits for it)
    first = flat[:, 0].to('cpu', non_blocking=flat.is_cuda)
    changes = torch.nonzero(flat[:, 1:] != flat[:, :-1])
    if h * w < 2 ** 31:
        changes = changes.to(torch.int32)
    changes = changes.cpu()
    if rle_op.has_kernel():
        strings = ops.rle_from_changes(first, changes, h, w)
        return [{'size': [h, w], 'counts': s} for s in strings]
    return mask_util.frPyObjects(_run_lengths(first.numpy(), changes.numpy(), d, h * w, [h, w]),
                                 h, w)


def _run_lengths(first, changes, d, total, size):
    """COCO's uncompressed RLEs of D flattened masks of ``total`` pixels from the value of each
    mask's first pixel (D,) and the (mask, position) rows (sorted) where the value changes
    between position and position + 1 -> D dicts of 'size' and 'counts' (uint32), run lengths
    that start with a run of zeros (an empty one when the mask starts with a one)."""
    first = np.asarray(first, dtype=bool).reshape(d)
    mask_of = changes[:, 0].astype(np.int64)
    n = np.bincount(mask_of, minlength=d)                     # changes per mask
    lead = first.astype(np.int64)                             # an empty zero run first
    seg = n + 2 + lead                                        # the edges of each mask
    seg_start = np.concatenate(([0], np.cumsum(seg)[:-1]))
    edges = np.zeros(int(seg.sum()), dtype=np.int64)          # [0, (0,) changes + 1 ..., total]
    edges[seg_start + seg - 1] = total
    change_start = np.concatenate(([0], np.cumsum(n)[:-1]))
    rank = np.arange(changes.shape[0]) - change_start[mask_of]
    edges[seg_start[mask_of] + 1 + lead[mask_of] + rank] = changes[:, 1].astype(np.int64) + 1
    # run lengths: the differences of the edges, less those from one mask's end to the next's
    counts = np.delete(np.diff(edges), seg_start[1:] - 1).astype(np.uint32)
    runs = np.split(counts, np.cumsum(seg - 1)[:-1])
    return [{'size': size, 'counts': r} for r in runs]


def segm_results(cls_boxes, masks, ref_boxes, im_h, im_w, resolution, cls_specific,
                 thresh=0.5):
    """Detectron's ``cls_segms`` of one image.

    ``cls_boxes``: Detectron's per-class (n_j, 5) arrays; ``ref_boxes`` (D, 4): the same
    detections flattened in class order; ``masks`` (D, C, M, M) soft masks (numpy or a tensor on
    any device; C = 1 when ``cls_specific`` is False). Returns ``cls_segms[j]``, a list of n_j RLEs.
    """
    num_classes = len(cls_boxes)
    counts = [len(cls_boxes[j]) for j in range(1, num_classes)]
    masks = torch.as_tensor(masks)
    if masks.shape[0] != sum(counts):
        raise ValueError('segm_results: %d masks for %d boxes' % (masks.shape[0], sum(counts)))
    if cls_specific and masks.shape[1] > 1:
        classes = np.repeat(np.arange(1, num_classes), counts)
        index = torch.as_tensor(classes, dtype=torch.int64, device=masks.device)
        masks = masks[torch.arange(masks.shape[0], device=masks.device), index]
    else:
        masks = masks[:, 0]
    binary = paste_masks(masks, paste_boxes(ref_boxes, resolution), im_h, im_w, thresh)
    rles = encode_masks(binary)
    cls_segms = [[] for _ in range(num_classes)]
    start = 0
    for j, n in zip(range(1, num_classes), counts):
        cls_segms[j] = rles[start:start + n]
        start += n
    return cls_segms
