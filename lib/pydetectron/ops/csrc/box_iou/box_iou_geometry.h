// The overlap of one pair of boxes, shared by the CPU and CUDA kernels of `box_iou_batched` so
// that the two cannot drift apart. It reproduces the pure-torch reference
// (modeling/targets/overlaps.py) bit for bit: every operation below is one elementwise torch op
// there, in the same order and the same dtype, each rounded on its own:
//   iw    = max(min(x2a, x2b) - max(x1a, x1b) + 1, 0)        (subtract, then add 1)
//   ih    = likewise in y;  inter = iw * ih
//   area  = (x2 - x1 + 1) * (y2 - y1 + 1)
//   iou   = inter / ((area_a + area_b) - inter)   where inter > 0, else 0
//   ioa   = inter / area_a                        where inter > 0, else 0
// No product may be fused with the sum or difference that uses it (torch's kernels round each
// op): every step goes through the rounded helpers of common/macros.h.
// torch.minimum / torch.maximum propagate NaN, and so do min_nan / max_nan: a box with a NaN
// coordinate gets a NaN intersection, hence overlap 0, as in torch.
#pragma once

#include "common/macros.h"


namespace pydetectron {
namespace box_iou {

// add_rn / sub_rn / mul_rn / div_rn: common/macros.h.

// NaN-propagating minimum / maximum (torch.minimum / torch.maximum).
template <typename T>
PYDET_HOST_DEVICE T min_nan(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T>
PYDET_HOST_DEVICE T max_nan(T a, T b) { return (a > b || a != a) ? a : b; }

// Side of the overlap along one axis: (min(hi) - max(lo)) + 1, clamped at 0.
template <typename T>
PYDET_HOST_DEVICE T overlap_side(T lo_a, T hi_a, T lo_b, T hi_b) {
  const T side = add_rn(sub_rn(min_nan(hi_a, hi_b), max_nan(lo_a, lo_b)), T(1));
  return side < T(0) ? T(0) : side;
}

// (x2 - x1 + 1) * (y2 - y1 + 1) of a box b = (x1, y1, x2, y2).
template <typename T>
PYDET_HOST_DEVICE T area(const T* b) {
  return mul_rn(add_rn(sub_rn(b[2], b[0]), T(1)), add_rn(sub_rn(b[3], b[1]), T(1)));
}

// IoU of boxes a and q (over_first_area: intersection over the area of a); 0 unless they
// intersect (inter > 0, which is false for NaN).
template <typename T>
PYDET_HOST_DEVICE T overlap(const T* a, const T* q, bool over_first_area) {
  const T iw = overlap_side(a[0], a[2], q[0], q[2]);
  const T ih = overlap_side(a[1], a[3], q[1], q[3]);
  const T inter = mul_rn(iw, ih);
  if (!(inter > T(0))) return T(0);
  const T area_a = area(a);
  if (over_first_area) return div_rn(inter, area_a);
  return div_rn(inter, sub_rn(add_rn(area_a, area(q)), inter));
}

}  // namespace box_iou
}  // namespace pydetectron
