// The training targets' box overlaps in one op: IoU (or intersection over the first box's area)
// of every box of `boxes` with every box of `query_boxes`, per batch entry, with Detectron's
// inclusive-pixel (`+1`) widths. Registered as `torch.ops.pydetectron.box_iou_batched` in
// pydetectron.cpp; the arithmetic is in box_iou_geometry.h, shared by both kernels.
//   boxes             (B1, N, 4) float32 | float64   (x1, y1, x2, y2)
//   query_boxes       (B2, K, 4) same dtype, device  B1 == B2, or one of them 1 (broadcast)
//   over_first_area   false: intersection / union; true: intersection / area of `boxes`
//   output            (B, N, K) that dtype, B = B1 == 1 ? B2 : B1
// The values equal, bit for bit, the pure-torch reference (modeling/targets/overlaps.py).
#pragma once

#include "common/common.h"

namespace pydetectron {

at::Tensor box_iou_batched_cpu(const at::Tensor& boxes, const at::Tensor& query_boxes,
                               bool over_first_area);

#ifdef WITH_CUDA
at::Tensor box_iou_batched_cuda(const at::Tensor& boxes, const at::Tensor& query_boxes,
                                bool over_first_area);
#endif

namespace box_iou {

inline void check_box_tensor(const at::Tensor& t, const char* name, const char* shape,
                             const char* op) {
  PYDET_CHECK(t.dim() == 3 && t.size(2) == 4, op, ": `", name, "` must have shape ", shape,
              " = (x1, y1, x2, y2) per box, got ", t.sizes());
  PYDET_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `", name,
              "` must be float32 or float64, got ", t.scalar_type());
}

// Shapes, dtypes and one device; returns the output's batch size B.
inline int64_t check_inputs(const at::Tensor& boxes, const at::Tensor& query_boxes,
                            const char* op) {
  check_box_tensor(boxes, "boxes", "(B1, N, 4)", op);
  check_box_tensor(query_boxes, "query_boxes", "(B2, K, 4)", op);
  PYDET_CHECK(query_boxes.scalar_type() == boxes.scalar_type(), op, ": `query_boxes` (",
              query_boxes.scalar_type(), ") must have the dtype of `boxes` (",
              boxes.scalar_type(), ")");
  check_same_device(boxes, "boxes", query_boxes, op, "query_boxes");
  const int64_t b1 = boxes.size(0), b2 = query_boxes.size(0);
  PYDET_CHECK(b1 == b2 || b1 == 1 || b2 == 1, op, ": the batch sizes of `boxes` (", b1,
              ") and `query_boxes` (", b2, ") must be equal or one of them 1");
  return b1 == 1 ? b2 : b1;
}

}  // namespace box_iou
}  // namespace pydetectron
