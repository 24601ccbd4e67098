"""Detectron's keypoint decoding (``heatmaps_to_keypoints``) on the device: only the final
(R, 4, K) keypoints come to the host.

Shapes: R detections (of one image or of several), K keypoints, (Hk, Wk) heatmaps (56 x 56 in
Detectron's configs); the box of detection r is w_r x h_r pixels.

Detectron's rule (``utils/keypoints.py``, kept exactly by ``utils.keypoints.heatmaps_to_keypoints``,
the host loop):
1. each (K, Hk, Wk) heatmap is resized bicubically (OpenCV's ``cv2.resize`` ``INTER_CUBIC``:
   half-pixel centres, Keys' kernel with a = -0.75, the border replicated) to
   ceil(w_r) x ceil(h_r) pixels, at least ``KRCNN.INFERENCE_MIN_SIZE`` each;
2. each keypoint's arg-max over the resized map gives (x_int, y_int), the first in row-major
   order on ties; the keypoint is at ((x_int + 0.5) * w_r / map_w + x1, (y_int + 0.5) *
   h_r / map_h + y1), its logit the map's value there and its probability the spatial softmax
   of the resized map at that cell.

Here step 1 is two batched matrix products per chunk of detections, ``Ay @ Hm @ Ax^T``: each row
of the horizontal (map_w x Wk) and vertical (map_h x Hk) matrices holds OpenCV's four cubic
weights of that output pixel, zero past the detection's own map size. The maps of a chunk are
padded to the chunk's largest size, and the padding is set to -inf before the arg-max and the
softmax's sum. The weights are OpenCV's, bit for bit: the source coordinate
``float32((x + 0.5) * scale - 0.5)`` (``scale = Wk / map_w`` in float64), its floor as the second
tap, and the kernel's polynomials evaluated in float32 one operation at a time, as OpenCV's
generic resize does for a many-channel map (Detectron resizes the K maps as one K-channel image;
with 4 channels or fewer OpenCV may call IPP, whose weights differ in the last bits). The
products sum the taps in another order than ``cv2.resize``, so a logit can differ from the host
loop's by a few float32 steps, and an arg-max whose two best cells are that close can land on
the other cell (``tests/core/test_keypoint_results.py`` measures both).
"""
import numpy as np
import torch

from pydetectron.core.mask_results import _exact_bmm
from pydetectron.utils import keypoints as keypoint_utils

__all__ = ['cubic_matrix', 'heatmaps_to_keypoints']

# Elements of one chunk's (R_chunk, K, map_h, map_w) float32 product: 2^26 = 256 MB.
_CHUNK_ELEMS = 1 << 26


def cubic_matrix(lengths, src_size, out_size, device):
    """(D, out_size, src_size) float32: row p of detection d holds cv2.resize's bicubic weights of
    output pixel p of a ``src_size`` -> ``lengths[d]`` resize (rows p >= lengths[d] are zero)."""
    lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64), device=device).view(-1, 1)
    pos = torch.arange(out_size, device=device, dtype=torch.int64).view(1, -1)        # (1, n)
    inside = pos < lengths                                                              # (D, n)
    scale = float(src_size) / lengths.to(torch.float64)                 # OpenCV: 1 / inv_scale
    f = ((pos.to(torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    left = torch.floor(f)
    x = f - left
    # Keys' kernel, a = -0.75, in float32 one operation at a time (as OpenCV's interpolateCubic)
    a = -0.75
    x1, y = x + 1.0, 1.0 - x
    coeffs = [((a * x1 - 5.0 * a) * x1 + 8.0 * a) * x1 - 4.0 * a,
              ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
              ((a + 2.0) * y - (a + 3.0)) * y * y + 1.0]
    coeffs.append(1.0 - coeffs[0] - coeffs[1] - coeffs[2])
    left = left.to(torch.int64)
    mat = torch.zeros(lengths.shape[0], out_size, src_size, dtype=torch.float32, device=device)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    for k, c in enumerate(coeffs):
        tap = torch.clamp(left + (k - 1), 0, src_size - 1)          # the border replicated
        mat.scatter_add_(2, tap.unsqueeze(2), torch.where(inside, c, zero).unsqueeze(2))
    return mat


def _chunks(map_w, map_h, per_cell):
    """Consecutive detection ranges whose padded (n, K, max_h, max_w) product fits the budget."""
    lo, n = 0, len(map_w)
    while lo < n:
        hi, big_w, big_h = lo + 1, map_w[lo], map_h[lo]
        while hi < n:
            w, h = max(big_w, map_w[hi]), max(big_h, map_h[hi])
            if (hi + 1 - lo) * w * h * per_cell > _CHUNK_ELEMS:
                break
            big_w, big_h, hi = w, h, hi + 1
        yield lo, hi, int(big_w), int(big_h)
        lo = hi


def heatmaps_to_keypoints(maps, rois, min_size=0):
    """(R, K, Hk, Wk) heatmap logits (a tensor on any device) on (R, 4) boxes (numpy, image
    pixels) -> (R, 4, K) float32 numpy rows x, y, logit, prob, as Detectron's decoding.

    The resizing, arg-max and softmax run on the heatmaps' device; the (R, K) arg-max cells,
    logits and probabilities come to the host, where the coordinates are computed with the host
    loop's float arithmetic.
    """
    maps = torch.as_tensor(maps)
    rois = np.asarray(rois, dtype=np.float32).reshape(-1, 4)
    r, k = int(maps.shape[0]), int(maps.shape[1])
    if r != rois.shape[0]:
        raise ValueError('heatmaps_to_keypoints: %d heatmaps for %d boxes' % (r, rois.shape[0]))
    xy_preds = np.zeros((r, 4, k), dtype=np.float32)
    if r == 0:
        return xy_preds
    device = maps.device
    maps = maps.to(torch.float32)
    src_h, src_w = int(maps.shape[2]), int(maps.shape[3])
    widths, heights, map_w, map_h = keypoint_utils.heatmap_map_sizes(rois, min_size)
    # chunks of detections of similar map sizes pad little: take them by increasing area
    order = np.argsort(map_w * map_h, kind='stable')
    sorted_w, sorted_h = map_w[order], map_h[order]
    order_t = torch.as_tensor(order, device=device)
    results = []
    for lo, hi, big_w, big_h in _chunks(sorted_w, sorted_h, k):
        n = hi - lo
        ax = cubic_matrix(sorted_w[lo:hi], src_w, big_w, device)              # (n, big_w, Wk)
        ay = cubic_matrix(sorted_h[lo:hi], src_h, big_h, device)              # (n, big_h, Hk)
        hm = maps[order_t[lo:hi]].reshape(n * k, src_h, src_w)
        # horizontal then vertical, as OpenCV: (n*K, Hk, Wk) @ (n*K, Wk, big_w)
        rows = _exact_bmm(hm, ax.transpose(1, 2).repeat_interleave(k, dim=0))
        resized = _exact_bmm(ay.repeat_interleave(k, dim=0), rows)          # (n*K, big_h, big_w)
        resized = resized.view(n, k, big_h, big_w)
        w_t = torch.as_tensor(sorted_w[lo:hi], device=device).view(n, 1, 1, 1)
        h_t = torch.as_tensor(sorted_h[lo:hi], device=device).view(n, 1, 1, 1)
        valid = ((torch.arange(big_w, device=device).view(1, 1, 1, -1) < w_t)
                 & (torch.arange(big_h, device=device).view(1, 1, -1, 1) < h_t))
        resized = resized.masked_fill(~valid, float('-inf')).view(n, k, big_h * big_w)
        best, best_cell = resized.max(dim=2)                          # first maximum on ties
        total = torch.exp(resized - best.unsqueeze(2)).sum(dim=2)      # exp(-inf) = 0
        # the padded row-major cell -> y, x (exact in float32 below 2^24 cells)
        results.append(torch.stack([(best_cell // big_w).to(torch.float32),
                                    (best_cell % big_w).to(torch.float32), best, 1.0 / total]))
    found = np.empty((4, r, k), dtype=np.float32)
    found[:, order] = torch.cat(results, dim=1).cpu().numpy()          # one copy to the host
    y_int, x_int = found[0].astype(np.int64), found[1].astype(np.int64)
    logit, prob = found[2], found[3]
    # the host loop's arithmetic: float32 corrections, float64 sums, stored as float32
    width_correction = (widths / map_w.astype(np.float32))[:, None]
    height_correction = (heights / map_h.astype(np.float32))[:, None]
    xy_preds[:, 0] = (x_int + 0.5) * width_correction + rois[:, 0:1]
    xy_preds[:, 1] = (y_int + 0.5) * height_correction + rois[:, 1:2]
    xy_preds[:, 2] = logit
    xy_preds[:, 3] = prob
    return xy_preds
