// RoIPool: Caffe2's RoIPoolF as Detectron uses it (detectron/ops/roi_pool_f*, the Fast R-CNN op):
//   RoI corners are rounded (half away from zero) after scaling; the RoI spans
//   max(end - start + 1, 1) cells; bin `p` covers [floor(p * bin), ceil((p + 1) * bin)) shifted by
//   the RoI start and clipped to the map; an empty bin outputs 0 (argmax -1).
//   input  (N, C, H, W), rois (K, 5) = (batch_index, x1, y1, x2, y2)
//   output (K, C, PH, PW) dtype of input; argmax (K, C, PH, PW) int64, the flat index into
//   input (n * C * H * W + c * H * W + h * W + w) of each bin's maximum, -1 for an empty bin.
#pragma once

#include "common/common.h"

#include <cmath>
#include <tuple>

#include "common/macros.h"

namespace pydetectron {

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale,
                                                        int64_t pooled_height,
                                                        int64_t pooled_width);

// grad (K, C, PH, PW) -> grad_input (batch_size, channels, height, width), routed through argmax.
at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& argmax,
                                 int64_t batch_size, int64_t channels, int64_t height,
                                 int64_t width);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         double spatial_scale,
                                                         int64_t pooled_height,
                                                         int64_t pooled_width);

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& argmax,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width);
#endif

// One bin's window [hstart, hend) x [wstart, wend) in feature cells, as RoIPoolF computes it.
struct RoIPoolBin {
  int64_t hstart, hend, wstart, wend;
};

template <typename T>
PYDET_HOST_DEVICE RoIPoolBin roi_pool_bin(const T* roi, T spatial_scale, int pooled_height,
                                          int pooled_width, int ph, int pw, int64_t height,
                                          int64_t width) {
  // round(): half away from zero, as Caffe2's CUDA `round`.
  const int64_t roi_start_w = static_cast<int64_t>(round(roi[1] * spatial_scale));
  const int64_t roi_start_h = static_cast<int64_t>(round(roi[2] * spatial_scale));
  const int64_t roi_end_w = static_cast<int64_t>(round(roi[3] * spatial_scale));
  const int64_t roi_end_h = static_cast<int64_t>(round(roi[4] * spatial_scale));
  // Malformed RoIs are forced to be 1x1.
  const int64_t roi_w = roi_end_w - roi_start_w + 1 > 1 ? roi_end_w - roi_start_w + 1 : 1;
  const int64_t roi_h = roi_end_h - roi_start_h + 1 > 1 ? roi_end_h - roi_start_h + 1 : 1;
  const T bin_h = static_cast<T>(roi_h) / static_cast<T>(pooled_height);
  const T bin_w = static_cast<T>(roi_w) / static_cast<T>(pooled_width);
  RoIPoolBin b;
  b.hstart = static_cast<int64_t>(floor(static_cast<T>(ph) * bin_h));
  b.wstart = static_cast<int64_t>(floor(static_cast<T>(pw) * bin_w));
  b.hend = static_cast<int64_t>(ceil(static_cast<T>(ph + 1) * bin_h));
  b.wend = static_cast<int64_t>(ceil(static_cast<T>(pw + 1) * bin_w));
  // Add the RoI offset and clip to the feature map.
  b.hstart = b.hstart + roi_start_h;
  b.hend = b.hend + roi_start_h;
  b.wstart = b.wstart + roi_start_w;
  b.wend = b.wend + roi_start_w;
  b.hstart = b.hstart < 0 ? 0 : (b.hstart > height ? height : b.hstart);
  b.hend = b.hend < 0 ? 0 : (b.hend > height ? height : b.hend);
  b.wstart = b.wstart < 0 ? 0 : (b.wstart > width ? width : b.wstart);
  b.wend = b.wend < 0 ? 0 : (b.wend > width ? width : b.wend);
  return b;
}

}  // namespace pydetectron
