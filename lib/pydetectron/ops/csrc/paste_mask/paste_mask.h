// Detectron's mask pasting in one op: each soft M x M mask resized into its box in the image,
// thresholded, as `segm_results` does it (core/test.py in Detectron; pydetectron's
// core/mask_results.py). Registered as `torch.ops.pydetectron.paste_masks_in_image` in
// pydetectron.cpp; the arithmetic is in paste_mask_geometry.h, shared by both kernels.
//   masks      (D, M, M) float32  soft masks (unpadded: the kernels add Detectron's one-cell zero
//                                 border, so the resize source is (M + 2) x (M + 2))
//   boxes      (D, 4) int64       pasting boxes x0, y0, x1, y1 (expanded by (M + 2) / M and
//                                 truncated: mask_results.paste_boxes)
//   height, width                 the image's size
//   threshold                     a pixel is set when its resized value is > threshold
//   output     (D, H, W) bool     a transposed view of (D, W, H) storage: each mask column-major
//                                 in memory, the order of COCO's run-length encoding
#pragma once

#include "common/common.h"

namespace pydetectron {

at::Tensor paste_masks_in_image_cpu(const at::Tensor& masks, const at::Tensor& boxes,
                                    int64_t height, int64_t width, double threshold);

#ifdef WITH_CUDA
at::Tensor paste_masks_in_image_cuda(const at::Tensor& masks, const at::Tensor& boxes,
                                     int64_t height, int64_t width, double threshold);
#endif

namespace paste_mask {

inline void check_inputs(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                         int64_t width, const char* op) {
  PYDET_CHECK(masks.scalar_type() == at::kFloat, op, ": `masks` must be float32, got ",
              masks.scalar_type());
  PYDET_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2) && masks.size(1) >= 1, op,
              ": `masks` must have shape (D, M, M) with M >= 1, got ", masks.sizes());
  PYDET_CHECK(boxes.scalar_type() == at::kLong, op, ": `boxes` must be int64, got ",
              boxes.scalar_type());
  PYDET_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0), op,
              ": `boxes` must have shape (D, 4) = (x0, y0, x1, y1) with D = ", masks.size(0),
              ", got ", boxes.sizes());
  check_same_device(masks, "masks", boxes, op, "boxes");
  PYDET_CHECK(height >= 0 && width >= 0, op, ": `height` and `width` must be >= 0, got ",
              height, " x ", width);
  PYDET_CHECK(height < (int64_t(1) << 31) && width < (int64_t(1) << 31), op,
              ": `height` and `width` must be < 2^31, got ", height, " x ", width);
}

}  // namespace paste_mask
}  // namespace pydetectron
