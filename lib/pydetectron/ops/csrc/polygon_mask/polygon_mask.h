// Mask R-CNN's mask targets in one op: the polygons of an object rasterized inside each box, as
// Detectron does it (float32 mapping into the box's M x M frame, then pycocotools' rleFrPoly,
// the object's polygons OR-ed), with no host synchronisation. Registered as
// `torch.ops.pydetectron.polygon_masks_in_boxes` in pydetectron.cpp; the arithmetic is in
// polygon_mask_geometry.h, shared by both kernels.
//   xy            (V, 2) float32  polygon vertices (x, y), the polygons one after the other
//   poly_starts   (P,) int64      first vertex of each polygon
//   poly_lengths  (P,) int64      vertex count of each polygon
//   group_first   (Q,) int64      first polygon of each object (an object's polygons are
//   group_count   (Q,) int64      contiguous) and its polygon count
//   boxes         (R, 4) float32  (x1, y1, x2, y2), the frame of the polygons
//   group         (R,) int64      the object box r gets; outside [0, Q) (e.g. -1): none
//   output        (R, M, M) bool  out[r] = OR over the polygons of object group[r] of their
//                                 pycocotools rasterization in box r's frame; all zero for none
// The CPU kernel raises for a polygon or object whose range does not fit in `xy` / the polygons;
// the CUDA kernel (which cannot raise without a synchronisation) skips such a polygon or object.
#pragma once

#include "common/common.h"

namespace pydetectron {

at::Tensor polygon_masks_in_boxes_cpu(const at::Tensor& xy, const at::Tensor& poly_starts,
                                      const at::Tensor& poly_lengths,
                                      const at::Tensor& group_first,
                                      const at::Tensor& group_count, const at::Tensor& boxes,
                                      const at::Tensor& group, int64_t resolution);

#ifdef WITH_CUDA
at::Tensor polygon_masks_in_boxes_cuda(const at::Tensor& xy, const at::Tensor& poly_starts,
                                       const at::Tensor& poly_lengths,
                                       const at::Tensor& group_first,
                                       const at::Tensor& group_count, const at::Tensor& boxes,
                                       const at::Tensor& group, int64_t resolution);
#endif

namespace polygon_mask {

inline void check_index_vector(const at::Tensor& t, const char* name, int64_t n,
                               const char* n_name, const at::Tensor& boxes, const char* op) {
  PYDET_CHECK(t.scalar_type() == at::kLong, op, ": `", name, "` must be int64, got ",
              t.scalar_type());
  if (n >= 0) {
    PYDET_CHECK(t.dim() == 1 && t.size(0) == n, op, ": `", name, "` must have shape (", n_name,
                ",) with ", n_name, " = ", n, ", got ", t.sizes());
  } else {
    PYDET_CHECK(t.dim() == 1, op, ": `", name, "` must be 1-D (", n_name, ",), got shape ",
                t.sizes());
  }
  check_same_device(boxes, "boxes", t, op, name);
}

// Dtypes, shapes, one device, resolution >= 1 (the data themselves are not read here).
inline void check_inputs(const at::Tensor& xy, const at::Tensor& poly_starts,
                         const at::Tensor& poly_lengths, const at::Tensor& group_first,
                         const at::Tensor& group_count, const at::Tensor& boxes,
                         const at::Tensor& group, int64_t resolution, const char* op) {
  PYDET_CHECK(boxes.scalar_type() == at::kFloat, op, ": `boxes` must be float32, got ",
              boxes.scalar_type());
  PYDET_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": `boxes` must have shape (R, 4) = (x1, y1, x2, y2), got ", boxes.sizes());
  PYDET_CHECK(xy.scalar_type() == at::kFloat, op, ": `xy` must be float32, got ",
              xy.scalar_type());
  PYDET_CHECK(xy.dim() == 2 && xy.size(1) == 2, op,
              ": `xy` must have shape (V, 2) = polygon vertices (x, y), got ", xy.sizes());
  check_same_device(boxes, "boxes", xy, op, "xy");
  check_index_vector(poly_starts, "poly_starts", -1, "P", boxes, op);
  check_index_vector(poly_lengths, "poly_lengths", poly_starts.size(0), "P", boxes, op);
  check_index_vector(group_first, "group_first", -1, "Q", boxes, op);
  check_index_vector(group_count, "group_count", group_first.size(0), "Q", boxes, op);
  check_index_vector(group, "group", boxes.size(0), "R", boxes, op);
  PYDET_CHECK(resolution >= 1, op, ": `resolution` must be >= 1, got ", resolution);
  // The kernels index a mask's rows and columns with int and a toggle row up to M.
  PYDET_CHECK(resolution < (int64_t(1) << 15), op, ": `resolution` must be < 32768, got ",
              resolution);
}

}  // namespace polygon_mask
}  // namespace pydetectron
