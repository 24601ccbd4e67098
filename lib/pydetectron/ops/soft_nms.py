"""Soft-NMS as Detectron runs it (``utils/boxes.py`` ``soft_nms`` over ``cython_nms.soft_nms``).

Methods: ``'linear'`` (score *= 1 - IoU when IoU > overlap_thresh), ``'gaussian'``
(score *= exp(-IoU^2 / sigma)) and ``'hard'`` (score = 0 when IoU > overlap_thresh); boxes whose
score falls below ``score_thresh`` are dropped. The order of visits, the tie-breaking (first
position wins) and the float32 arithmetic are Detectron's, so float32 inputs reproduce its output
bit for bit. CUDA inputs run a single-block CUDA kernel of the same algorithm.
"""
import torch

from pydetectron.ops import _ext
from pydetectron.ops._utils import check_boxes_and_scores

_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}


def soft_nms(boxes, scores, sigma=0.5, overlap_thresh=0.3, score_thresh=0.001, method="linear"):
    """Soft-NMS over ``boxes`` (N, 4) with ``scores`` (N,).

    Returns the tuple ``(kept_boxes (M, 4), new_scores (M,), keep (M,) int64)``: the surviving
    boxes, their decayed scores and their indices into the input, in the order Soft-NMS selected
    them (Detectron's ``dets[:, :4]``, ``dets[:, 4]`` and ``keep``).
    """
    if method not in _METHODS:
        raise ValueError("soft_nms: unknown `method` %r; expected one of %s"
                         % (method, sorted(_METHODS)))
    _ext.load()
    check_boxes_and_scores(boxes, scores, "soft_nms")
    return torch.ops.pydetectron.soft_nms(boxes, scores, float(sigma), float(overlap_thresh),
                                          float(score_thresh), _METHODS[method])


def _register():
    """Fake kernel (data-dependent output size) for torch.compile."""

    @torch.library.register_fake("pydetectron::soft_nms")
    def _soft_nms_fake(boxes, scores, sigma, overlap_thresh, score_thresh, method):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                     lambda: "soft_nms: `boxes` must have shape (N, 4)")
        m = torch.library.get_ctx().new_dynamic_size()
        return (boxes.new_empty((m, 4)), scores.new_empty((m,)),
                boxes.new_empty((m,), dtype=torch.long))
