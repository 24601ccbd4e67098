// RoIAlign: forward and backward kernels per device. Registered as
// `torch.ops.pydetectron.roi_align` and `torch.ops.pydetectron._roi_align_backward` in
// pydetectron.cpp; the dispatcher picks the CPU or CUDA kernel from the tensors' device.
//   input  (N, C, H, W)           float32 / float64 / float16 / bfloat16
//   rois   (K, 5)                 (batch_index, x1, y1, x2, y2), any floating dtype
//   output (K, C, PH, PW)         dtype of input
#pragma once

#include "common/common.h"

namespace pydetectron {

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height,
                                 int64_t pooled_width, int64_t sampling_ratio, bool aligned);

// grad (K, C, PH, PW) -> grad_input (batch_size, channels, height, width), dtype of grad.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned);

#ifdef WITH_CUDA
at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t sampling_ratio, bool aligned);

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned);
#endif

}  // namespace pydetectron
