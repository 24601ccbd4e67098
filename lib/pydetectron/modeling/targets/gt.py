"""Per-image ground truth packed into padded device tensors, the input of the target functions.

The loader hands the model one dict per image (``roidb``, CPU tensors or numpy arrays in blob
scale; see ``pydetectron.roi_data.loader``). The target functions work on all images at once, so
the ground truth is padded to the largest count G in the batch:

    boxes      (N, G, 4) float32, blob scale, inclusive corners
    classes    (N, G) int64 contiguous class ids, 0 in padding
    is_crowd   (N, G) bool
    valid      (N, G) bool, True for real ground-truth rows (``gt_classes > 0``, crowd included:
               Detectron's ``gt_inds``); padding is False
    keypoints  (N, G, 3, K) float32 (x, y, v) in blob scale, or None
    boxes_orig (N, G, 4) float32, the same boxes at the original image scale (the roidb's own
               values, the loader's ``boxes_orig``), or None when the roidb does not carry them
    keypoints_orig (N, G, 3, K) float32 at the original image scale, or None

Detectron computes the Fast R-CNN box targets, the mask targets and the keypoint targets from the
roidb at the original scale; the ``*_orig`` fields let the targets do the same instead of
undoing the blob scale (``(x * s) * (1 / s)`` in float32 is not always x). A roidb without them
(e.g. hand-built) falls back to the blob-scale values times ``1 / im_scale``.

A ground-truth box is addressed batch-wide as ``n * G + j`` (``flat_index``). Rows whose
``gt_classes`` is 0 (proposal rows of a Fast R-CNN roidb) are not ground truth and are dropped;
the kept rows keep their order, so ``segms[j]`` still belongs to kept row j.
"""
from collections import namedtuple

import numpy as np
import torch

GtBatch = namedtuple('GtBatch', ['boxes', 'classes', 'is_crowd', 'valid', 'keypoints',
                                 'boxes_orig', 'keypoints_orig'])
GtBatch.__new__.__defaults__ = (None, None)


def to_device_async(t, device):
    """``t`` (a CPU tensor) on ``device`` without a host synchronisation: a CUDA copy goes through
    pinned memory (torch's cached pinned allocator), so the host queues it and moves on."""
    device = torch.device(device)
    if device.type != 'cuda':
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _as_tensor(x, name, i, dtype, device):
    if x is None:
        raise KeyError("roidb[%d] has no '%s' field; the loader's per-image ground-truth dict "
                       "must provide it" % (i, name))
    if isinstance(x, np.ndarray) or not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    return x.to(device=device, dtype=dtype)


def gt_rows(entry, i=0):
    """Indices (CPU int64) of the ground-truth rows of one roidb entry (``gt_classes > 0``)."""
    classes = entry.get('gt_classes')
    classes = _as_tensor(classes, 'gt_classes', i, torch.long, 'cpu')
    return torch.nonzero(classes > 0, as_tuple=False).flatten()


def pack_gt(roidb, device, with_keypoints=False):
    """Pad the ground truth of ``roidb`` (a list of N per-image dicts) into a ``GtBatch``.

    Each dict needs ``boxes`` (R, 4), ``gt_classes`` (R,), ``is_crowd`` (R,) and, with
    ``with_keypoints``, ``gt_keypoints`` (G, 3, K) for its G ground-truth rows; the original-scale
    ``boxes_orig`` (R, 4) and ``gt_keypoints_orig`` (G, 3, K) are packed when every dict has them.
    """
    if not isinstance(roidb, (list, tuple)) or len(roidb) == 0:
        raise ValueError('pack_gt: roidb must be a non-empty list of per-image dicts, got %r'
                         % type(roidb).__name__)
    per_image = []
    for i, entry in enumerate(roidb):
        keep = gt_rows(entry, i)
        boxes = _as_tensor(entry.get('boxes'), 'boxes', i, torch.float32, 'cpu')
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError("roidb[%d]['boxes'] must be (R, 4), got shape %s"
                             % (i, tuple(boxes.shape)))
        classes = _as_tensor(entry.get('gt_classes'), 'gt_classes', i, torch.long, 'cpu')
        crowd = _as_tensor(entry.get('is_crowd'), 'is_crowd', i, torch.bool, 'cpu')
        if not (boxes.shape[0] == classes.shape[0] == crowd.shape[0]):
            raise ValueError("roidb[%d]: 'boxes' (%d rows), 'gt_classes' (%d) and 'is_crowd' (%d) "
                             "must have the same length" % (i, boxes.shape[0], classes.shape[0],
                                                            crowd.shape[0]))
        kps = None
        if with_keypoints:
            kps = _as_tensor(entry.get('gt_keypoints'), 'gt_keypoints', i, torch.float32, 'cpu')
            if kps.dim() != 3 or kps.shape[1] != 3 or kps.shape[0] != keep.numel():
                raise ValueError("roidb[%d]['gt_keypoints'] must be (G, 3, K) with G = %d "
                                 "ground-truth rows, got shape %s"
                                 % (i, keep.numel(), tuple(kps.shape)))
        per_image.append((boxes[keep], classes[keep], crowd[keep], kps))
    boxes_orig = _pack_orig(
        roidb, 'boxes_orig', [b.shape for b, _, _, _ in per_image],
        lambda e, i: _as_tensor(e['boxes_orig'], 'boxes_orig', i, torch.float32, 'cpu')[
            gt_rows(e, i)])
    kps_orig = None
    if with_keypoints:
        kps_orig = _pack_orig(
            roidb, 'gt_keypoints_orig', [k.shape for _, _, _, k in per_image],
            lambda e, i: _as_tensor(e['gt_keypoints_orig'], 'gt_keypoints_orig', i,
                                    torch.float32, 'cpu'))

    N = len(per_image)
    # At least one (padding) column, so that reductions over the ground truth are never empty.
    G = max(1, max(b.shape[0] for b, _, _, _ in per_image))
    boxes = torch.zeros((N, G, 4), dtype=torch.float32)
    classes = torch.zeros((N, G), dtype=torch.long)
    is_crowd = torch.zeros((N, G), dtype=torch.bool)
    valid = torch.zeros((N, G), dtype=torch.bool)
    keypoints = None
    if with_keypoints:
        K = per_image[0][3].shape[2]
        keypoints = torch.zeros((N, G, 3, K), dtype=torch.float32)
    for n, (b, c, cr, kp) in enumerate(per_image):
        g = b.shape[0]
        boxes[n, :g] = b
        classes[n, :g] = c
        is_crowd[n, :g] = cr
        valid[n, :g] = True
        if kp is not None:
            if kp.shape[2] != keypoints.shape[3]:
                raise ValueError("roidb[%d]['gt_keypoints'] has %d keypoints, roidb[0] has %d"
                                 % (n, kp.shape[2], keypoints.shape[3]))
            keypoints[n, :g] = kp
    # One asynchronous host -> device copy per field for the whole batch.
    return GtBatch(to_device_async(boxes, device), to_device_async(classes, device),
                   to_device_async(is_crowd, device), to_device_async(valid, device),
                   None if keypoints is None else to_device_async(keypoints, device),
                   None if boxes_orig is None else to_device_async(boxes_orig, device),
                   None if kps_orig is None else to_device_async(kps_orig, device))


def _pack_orig(roidb, key, shapes, rows_of):
    """(N, G, ...) padded original-scale field ``key`` of every image's gt rows, or None when some
    dict lacks it. ``rows_of(entry, i)`` gives image i's (G_i, ...) rows, which must have the
    shape of its blob-scale rows, ``shapes[i]``."""
    if not all(e.get(key) is not None for e in roidb):
        return None
    rows = []
    for i, entry in enumerate(roidb):
        r = rows_of(entry, i)
        if tuple(r.shape) != tuple(shapes[i]):
            raise ValueError("roidb[%d]['%s'] has shape %s, its blob-scale rows have %s"
                             % (i, key, tuple(r.shape), tuple(shapes[i])))
        rows.append(r)
    G = max(1, max(r.shape[0] for r in rows))
    out = torch.zeros((len(rows), G) + tuple(rows[0].shape[1:]), dtype=torch.float32)
    for n, r in enumerate(rows):
        out[n, :r.shape[0]] = r
    return out


def flat_index(n, j, G):
    """Batch-wide index ``n * G + j`` of ground-truth row j of image n."""
    return n * G + j
