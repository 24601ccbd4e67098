"""Detectron's mask pasting in one op: each soft M x M mask resized into its box in the image and
thresholded, as Detectron's ``segm_results`` does it.

``paste_masks_in_image(masks, boxes, height, width, threshold=0.5)`` -> (D, H, W) bool. One
kernel launch (CPU: detections in parallel; CUDA: one thread per pixel, no host
synchronisation); it replaces the ~60 small torch ops of the matrix-product path
(``core.mask_results.paste_masks``, which stays as the fallback when the extension is not
built).

Shapes (M = the masks' resolution):
    masks       (D, M, M) float32  soft masks; the op adds Detectron's one-cell zero border
    boxes       (D, 4) int64       pasting boxes x0, y0, x1, y1 (``core.mask_results.paste_boxes``:
                                   the detection expanded by (M + 2) / M and truncated)
    output      (D, H, W) bool     a transposed view of (D, W, H) storage: each mask is
                                   column-major in memory, the order of COCO's run-length
                                   encoding (``output[d].t().reshape(-1)`` is a view)

Rule, per detection: w = max(x1 - x0 + 1, 1), h = max(y1 - y0 + 1, 1); the padded mask resized
bilinearly to h x w with OpenCV's taps (half-pixel centres, the border replicated); image pixels
x in [max(x0, 0), min(x1 + 1, W)) and y in [max(y0, 0), min(y1 + 1, H)) take resized pixel
(y - y0, x - x0), set when it is > ``threshold``; the rest is 0 (a box with x1 < x0 or y1 < y0
sets nothing, as Detectron's slices). Each product and sum is rounded on its own, so the CPU and
CUDA kernels agree bit for bit; cv2.resize's own rounding differs in the last bits, so a pixel
within a rounding step of the threshold can come out otherwise than Detectron's.
"""
import torch

from pydetectron.ops import _ext

_OP = "paste_masks_in_image"


def _check_arguments(masks, boxes, height, width, threshold):
    for name, t in (("masks", masks), ("boxes", boxes)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("%s: `%s` must be a tensor, got %s" % (_OP, name, type(t).__name__))
    if masks.dtype != torch.float32:
        raise TypeError("%s: `masks` must be float32, got %s" % (_OP, masks.dtype))
    if masks.dim() != 3 or masks.size(1) != masks.size(2) or masks.size(1) < 1:
        raise ValueError("%s: `masks` must have shape (D, M, M) with M >= 1, got %s"
                         % (_OP, tuple(masks.shape)))
    if boxes.dtype != torch.int64:
        raise TypeError("%s: `boxes` must be int64, got %s" % (_OP, boxes.dtype))
    if boxes.dim() != 2 or boxes.size(1) != 4 or boxes.size(0) != masks.size(0):
        raise ValueError("%s: `boxes` must have shape (D, 4) = (x0, y0, x1, y1) with D = %d, "
                         "got %s" % (_OP, masks.size(0), tuple(boxes.shape)))
    if boxes.device != masks.device:
        raise ValueError("%s: `boxes` is on %s but `masks` is on %s; both must be on one device"
                         % (_OP, boxes.device, masks.device))
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError("%s: `%s` must be an int >= 0, got %r" % (_OP, name, v))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError("%s: `threshold` must be a number, got %r" % (_OP, threshold))


def paste_masks_in_image(masks, boxes, height, width, threshold=0.5):
    """(D, H, W) bool: the (D, M, M) soft ``masks`` pasted into an image of ``height`` x
    ``width`` at the int64 pasting ``boxes`` and thresholded; see the module docstring."""
    _ext.load()
    _check_arguments(masks, boxes, height, width, threshold)
    return torch.ops.pydetectron.paste_masks_in_image(masks, boxes, int(height), int(width),
                                                      float(threshold))


def has_kernel_for(device):
    """True when the built extension has a kernel of this op for ``device`` (cpu / cuda)."""
    return _ext.has_kernel(_OP, device)


def _register():
    """The fake kernel for the C++ op (called once, when the extension loads)."""

    @torch.library.register_fake("pydetectron::" + _OP)
    def _paste_masks_in_image_fake(masks, boxes, height, width, threshold):
        torch._check(masks.dim() == 3, lambda: "%s: `masks` must have shape (D, M, M)" % _OP)
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                     lambda: "%s: `boxes` must have shape (D, 4)" % _OP)
        storage = masks.new_empty((masks.size(0), width, height), dtype=torch.bool)
        return storage.transpose(1, 2)
