// The arithmetic of Caffe2's RoIAlign (caffe2/operators/roi_align_op.cc), shared by the CPU and CUDA
// kernels. Conventions in force:
//   aligned=false (Detectron): RoI corners are `coord * spatial_scale` with no half-pixel shift and
//     the RoI width/height are clamped to at least 1;
//   aligned=true: corners are shifted by -0.5 (pixel centres at integer + 0.5) and not clamped.
//   sampling_ratio <= 0 means adaptive: ceil(roi_size / pooled_size) samples per bin and axis.
//   A sample at y < -1 or y > H (x likewise) contributes 0; otherwise it is clamped to >= 0, and a
//   sample at or past the last row/column reads that row/column only.
// The bilinear weight of a sample is separable: w = wy * wx, each from one `AxisTap`, which is how
// Caffe2 forms it (w1 = hy * hx, ...), so forward and backward reproduce its float32 arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetectron {

template <typename T>
struct RoIAlignGeometry {
  int64_t batch;   // batch index of the RoI
  T start_h;       // top of the RoI in feature coordinates
  T start_w;       // left of the RoI
  T bin_h;         // bin height (roi_height / pooled_height)
  T bin_w;
  int grid_h;      // samples per bin along y
  int grid_w;
  T count;         // samples per bin (>= 1): the average's divisor
};

// `roi` points at one (batch_index, x1, y1, x2, y2) row.
template <typename T>
PYDET_HOST_DEVICE RoIAlignGeometry<T> roi_align_geometry(const T* roi, T spatial_scale,
                                                         int pooled_height, int pooled_width,
                                                         int sampling_ratio, bool aligned) {
  RoIAlignGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  const T end_w = roi[3] * spatial_scale - offset;
  const T end_h = roi[4] * spatial_scale - offset;
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {
    // Caffe2/Detectron: force malformed RoIs to be 1x1.
    roi_w = roi_w > static_cast<T>(1) ? roi_w : static_cast<T>(1);
    roi_h = roi_h > static_cast<T>(1) ? roi_h : static_cast<T>(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int>(ceil(roi_h / static_cast<T>(pooled_height)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int>(ceil(roi_w / static_cast<T>(pooled_width)));
  // An aligned RoI of zero or negative size has no samples: count 1 keeps its output at 0.
  if (g.grid_h < 0) g.grid_h = 0;
  if (g.grid_w < 0) g.grid_w = 0;
  const int n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Position of sample `i` (0-based) of bin `p` along one axis, as Caffe2 computes it.
template <typename T>
PYDET_HOST_DEVICE T sample_coord(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin +
         static_cast<T>(static_cast<T>(i) + static_cast<T>(0.5)) * bin / static_cast<T>(grid);
}

// The two neighbouring rows (or columns) of one sample coordinate and their weights.
template <typename T>
struct AxisTap {
  int64_t low;
  int64_t high;
  T w_low;   // weight of `low`  (Caffe2's hy / hx)
  T w_high;  // weight of `high` (Caffe2's ly / lx)
  bool valid;
};

template <typename T>
PYDET_HOST_DEVICE AxisTap<T> axis_tap(T v, int64_t size) {
  AxisTap<T> t;
  if (v < static_cast<T>(-1) || v > static_cast<T>(size)) {
    t.low = t.high = 0;
    t.w_low = t.w_high = static_cast<T>(0);
    t.valid = false;
    return t;
  }
  t.valid = true;
  if (v <= static_cast<T>(0)) v = static_cast<T>(0);
  t.low = static_cast<int64_t>(v);
  if (t.low >= size - 1) {
    t.high = t.low = size - 1;
    v = static_cast<T>(t.low);
  } else {
    t.high = t.low + 1;
  }
  t.w_high = v - static_cast<T>(t.low);
  t.w_low = static_cast<T>(1) - t.w_high;
  return t;
}

}  // namespace pydetectron
