"""Detectron's ops: RoIAlign (one map or a pyramid), RoIPool, RoICrop, the NMS family, box IoU (one
pair of box sets, and batched for the training targets), the Mask R-CNN polygon rasterization
inside boxes, and the test path's mask pasting into the image and its RLE strings (C++ on CPU,
CUDA on GPU).

The compiled kernels live in ``pydetectron._C`` (build with ``bash make.sh``) and register as
``torch.ops.pydetectron.*``; this package imports without them and each op raises one clear message
when they are missing. ``roi_crop``, ``box_iou`` and the FPN level mapping are pure torch.
"""
from pydetectron.ops import _ext
from pydetectron.ops._ext import available as extension_available  # noqa: F401
from pydetectron.ops.box_iou_batched import box_iou_batched  # noqa: F401
from pydetectron.ops.group_norm import group_norm_fused, group_norm_nhwc  # noqa: F401
from pydetectron.ops.fpn import fpn_roi_transform, map_rois_to_fpn_levels  # noqa: F401
from pydetectron.ops.nms import batched_nms, batched_nms_mask, box_iou, nms  # noqa: F401
from pydetectron.ops.paste_mask import paste_masks_in_image  # noqa: F401
from pydetectron.ops.polygon_mask import polygon_masks_in_boxes  # noqa: F401
from pydetectron.ops.rle import rle_from_changes  # noqa: F401
from pydetectron.ops.roi_align import RoIAlign, roi_align  # noqa: F401
from pydetectron.ops.roi_align_fpn import roi_align_fpn  # noqa: F401
from pydetectron.ops.roi_crop import roi_crop  # noqa: F401
from pydetectron.ops.roi_pool import RoIPool, roi_pool  # noqa: F401
from pydetectron.ops.soft_nms import soft_nms  # noqa: F401

# Register the ops (and their autograd / fake kernels) now when the extension is built, so that
# torch.compile and torch.ops see them before the first call; stay importable when it is not.
_ext.available()

__all__ = [
    "RoIAlign", "RoIPool", "batched_nms", "batched_nms_mask", "box_iou", "box_iou_batched",
    "extension_available", "fpn_roi_transform", "group_norm_fused", "group_norm_nhwc",
    "map_rois_to_fpn_levels", "nms", "paste_masks_in_image", "polygon_masks_in_boxes",
    "rle_from_changes", "roi_align", "roi_align_fpn", "roi_crop", "roi_pool", "soft_nms",
]
