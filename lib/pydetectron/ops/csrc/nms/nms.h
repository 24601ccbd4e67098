// Greedy NMS with Detectron's legacy `+1` box widths (detectron/utils/cython_nms.pyx `nms`):
//   boxes  (N, 4) = (x1, y1, x2, y2), scores (N,), same floating dtype and device
//   returns the kept indices (int64) in decreasing score order; ties in score keep the lower index
//   first (a stable sort). A box is suppressed when its IoU with a kept box is >= iou_threshold,
//   the IoU computed in float32 for float32/float16/bfloat16 boxes (float64 for float64), and the
//   threshold rounded to that precision first, as Detectron's float32 Cython does.
#pragma once

#include "common/common.h"

#include "common/macros.h"

namespace pydetectron {

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

// Class-wise NMS in one call: `idxs` (N,) integer class (or image) ids; boxes with different ids
// never suppress each other. Kept indices of all classes, in decreasing score order.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold);

// batched_nms as (N,) bool keep flags in the input order. On CUDA it makes no host
// synchronisation (the output size does not depend on the data), so callers can stay on the GPU.
at::Tensor batched_nms_mask_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                const at::Tensor& idxs, double iou_threshold);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold);
at::Tensor batched_nms_mask_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                 const at::Tensor& idxs, double iou_threshold);
#endif

// IoU of two boxes with the +1 convention, in Detectron's order of operations. `area_a` and
// `area_b` are (x2 - x1 + 1) * (y2 - y1 + 1). The product `w * h` is rounded before it is
// subtracted (no fused multiply-add), so CPU and CUDA agree bit for bit.
template <typename T>
PYDET_HOST_DEVICE T iou_plus_one(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2,
                                 T by2, T area_b) {
  const T xx1 = ax1 > bx1 ? ax1 : bx1;
  const T yy1 = ay1 > by1 ? ay1 : by1;
  const T xx2 = ax2 < bx2 ? ax2 : bx2;
  const T yy2 = ay2 < by2 ? ay2 : by2;
  T w = xx2 - xx1 + static_cast<T>(1);
  T h = yy2 - yy1 + static_cast<T>(1);
  w = w > static_cast<T>(0) ? w : static_cast<T>(0);
  h = h > static_cast<T>(0) ? h : static_cast<T>(0);
#if defined(__CUDA_ARCH__)
  const T inter = mul_rn(w, h);
#else
  const T inter = w * h;
#endif
  return inter / (area_a + area_b - inter);
}

}  // namespace pydetectron
