"""Detectron's quantized RPN anchors (``modeling/generate_anchors.py``, from the original Faster R-CNN).

The A anchors of one feature-map cell are built around the reference window
(0, 0, stride - 1, stride - 1), i.e. centred on ((stride - 1) / 2, (stride - 1) / 2):

1. for each aspect ratio r (height / width), a window of about the same area stride^2:
   w = round(sqrt(stride^2 / r)), h = round(w * r)  -- numpy's round, ties to even;
2. each such window scaled by size / stride for every size, about the same centre.

Corners are (ctr - (w - 1) / 2, ctr + (w - 1) / 2): the +1 width convention, so coordinates are
half-integers or integers. Order: aspect ratio major, size minor. This rounding is why the anchors
are "quantized": e.g. stride 16, size 32, ratio 0.5 gives a 46 x 22 box, not 45.25 x 22.6.
"""
import numpy as np

__all__ = ["generate_anchors", "retinanet_cell_anchors"]


def _mkanchors(ws, hs, x_ctr, y_ctr):
    """(len(ws), 4) boxes of widths ``ws`` and heights ``hs`` about (x_ctr, y_ctr)."""
    return np.stack([x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                     x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)], axis=1)


def generate_anchors(stride=16, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)):
    """(len(aspect_ratios) * len(sizes), 4) float64 anchors (x1, y1, x2, y2) for one cell.

    ``sizes`` are the anchors' approximate square-root areas in input pixels; ``stride`` is the
    feature map's stride (1 / spatial_scale).
    """
    stride = float(stride)
    scales = np.asarray(sizes, dtype=np.float64) / stride
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    ctr = 0.5 * (stride - 1)  # centre of the reference window (0, 0, stride - 1, stride - 1)
    ws = np.round(np.sqrt(stride * stride / ratios))
    hs = np.round(ws * ratios)
    # ratio major, scale minor: the scaled windows of ratio i are rows i*S .. i*S + S - 1
    anchors = [_mkanchors(w * scales, h * scales, ctr, ctr) for w, h in zip(ws, hs)]
    return np.concatenate(anchors, axis=0)


def retinanet_cell_anchors(level, scales_per_octave=3, aspect_ratios=(0.5, 1.0, 2.0),
                           anchor_scale=4):
    """(A, 4) float64 anchors of one cell of RetinaNet's pyramid level ``level`` (stride 2^level).

    A = scales_per_octave * len(aspect_ratios), octave major, aspect ratio minor (Detectron's
    ``_create_cell_anchors`` and the ``foa.octave * num_aspect_ratios + foa.aspect`` index of its
    training blobs): anchor ``a`` has size ``stride * 2^(octave / scales_per_octave) *
    anchor_scale`` and aspect ratio ``aspect_ratios[a % len(aspect_ratios)]``, each generated on
    its own by ``generate_anchors`` (so each is quantized about the stride's reference window).
    """
    stride = 2. ** level
    rows = []
    for octave in range(scales_per_octave):
        size = stride * 2 ** (octave / float(scales_per_octave)) * anchor_scale
        for ratio in aspect_ratios:
            rows.append(generate_anchors(stride=stride, sizes=(size,), aspect_ratios=(ratio,)))
    return np.concatenate(rows, axis=0)
