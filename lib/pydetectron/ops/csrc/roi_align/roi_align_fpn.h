// RoIAlign over a feature pyramid: every RoI pooled from its own level in one kernel launch, with
// no host synchronisation (no per-level counts read back, no sort, cat or scatter). Registered as
// `torch.ops.pydetectron.roi_align_fpn` and `_roi_align_fpn_backward` in pydetectron.cpp.
//   features[l]       (N, C, H_l, W_l)  l < L <= kMaxFpnLevels; one dtype (float32 / float64 /
//                                       float16 / bfloat16), N, C and device for all levels
//   rois              (K, 5)            (batch_index, x1, y1, x2, y2), any floating dtype
//   levels            (K,) int64        index into `features` (and `spatial_scales`) of each RoI
//   spatial_scales[l]                   feature cells per input pixel of level l
//   output            (K, C, PH, PW)    RoI k pooled from features[levels[k]]: the same bits as
//                                       `roi_align` of that RoI on that level
// A level index outside [0, L) is an error on the CPU; the CUDA kernel (which cannot raise without
// a synchronisation) outputs 0 for such a RoI and passes no gradient back, as it does for a batch
// index outside [0, N).
#pragma once

#include <string>
#include <vector>

#include "common/common.h"

namespace pydetectron {

// Levels a CUDA launch carries in its by-value argument struct (FPN uses 4 or 5).
constexpr int64_t kMaxFpnLevels = 8;

at::Tensor roi_align_fpn_forward_cpu(const at::TensorList features, const at::Tensor& rois,
                                     const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                     int64_t pooled_height, int64_t pooled_width,
                                     int64_t sampling_ratio, bool aligned);

// grad (K, C, PH, PW) -> one gradient (batch_size, channels, heights[l], widths[l]) per level,
// dtype of grad, zeros where no RoI reads; channels-last with `channels_last` (the forward's
// maps were), else contiguous.
std::vector<at::Tensor> roi_align_fpn_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t sampling_ratio, bool aligned, bool channels_last);

#ifdef WITH_CUDA
at::Tensor roi_align_fpn_forward_cuda(const at::TensorList features, const at::Tensor& rois,
                                      const at::Tensor& levels,
                                      at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio, bool aligned);

std::vector<at::Tensor> roi_align_fpn_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t sampling_ratio, bool aligned, bool channels_last);
#endif

// `levels` (K,) int64 beside `rois` (K, 5), on the device of `ref`.
inline void check_fpn_levels(const at::Tensor& ref, const char* ref_name, const at::Tensor& rois,
                             const at::Tensor& levels, const char* op) {
  check_floating(rois, op, "rois");
  check_same_device(ref, ref_name, rois, op, "rois");
  check_same_device(ref, ref_name, levels, op, "levels");
  PYDET_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": `rois` must have shape (K, 5) = (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
  PYDET_CHECK(levels.scalar_type() == at::kLong, op, ": `levels` must be int64, got ",
              levels.scalar_type());
  PYDET_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0), op,
              ": `levels` must have shape (K,) with K = rois.size(0) = ", rois.size(0), ", got ",
              levels.sizes());
}

inline void check_num_levels(int64_t num_levels, int64_t num_scales, const char* op) {
  PYDET_CHECK(num_levels >= 1 && num_levels <= kMaxFpnLevels, op, ": `features` must hold 1 to ",
              kMaxFpnLevels, " feature maps, got ", num_levels);
  PYDET_CHECK(num_scales == num_levels, op, ": `spatial_scales` must have one scale per feature "
              "map (", num_levels, "), got ", num_scales);
}

// The pyramid: 1..kMaxFpnLevels 4-D maps of one dtype, N, C and device, a scale each; `rois` and
// `levels` on that device.
inline void check_fpn_inputs(const at::TensorList features, const at::Tensor& rois,
                             const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                             int64_t pooled_height, int64_t pooled_width, const char* op) {
  check_num_levels(static_cast<int64_t>(features.size()),
                   static_cast<int64_t>(spatial_scales.size()), op);
  const at::Tensor& f0 = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    const std::string name = cat("features[", l, "]");
    PYDET_CHECK(f.dim() == 4, op, ": `", name, "` must be a 4-D (N, C, H, W) tensor, got shape ",
                f.sizes());
    check_floating(f, op, name.c_str());
    check_same_device(f0, "features[0]", f, op, name.c_str());
    PYDET_CHECK(f.scalar_type() == f0.scalar_type(), op, ": `", name, "` is ", f.scalar_type(),
                " but `features[0]` is ", f0.scalar_type(), "; all levels need one dtype");
    PYDET_CHECK(f.size(0) == f0.size(0) && f.size(1) == f0.size(1), op, ": `", name,
                "` has shape ", f.sizes(), " but `features[0]` has ", f0.sizes(),
                "; all levels need the same batch size N and channels C");
  }
  check_fpn_levels(f0, "features[0]", rois, levels, op);
  check_pooled_size(pooled_height, pooled_width, op);
}

// The backward's arguments: `grad` (K, C, PH, PW) and a (height, width) and scale per level.
inline void check_fpn_backward_inputs(const at::Tensor& grad, const at::Tensor& rois,
                                      const at::Tensor& levels,
                                      at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, int64_t channels,
                                      at::IntArrayRef heights, at::IntArrayRef widths,
                                      const char* op) {
  check_floating(grad, op, "grad");
  check_fpn_levels(grad, "grad", rois, levels, op);
  check_num_levels(static_cast<int64_t>(heights.size()),
                   static_cast<int64_t>(spatial_scales.size()), op);
  PYDET_CHECK(widths.size() == heights.size(), op, ": `heights` (", heights.size(),
              " levels) and `widths` (", widths.size(), ") must have one entry per level");
  PYDET_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, PH, PW) = (", rois.size(0), ", ", channels,
              ", ", pooled_height, ", ", pooled_width, "), got ", grad.sizes());
}

// The kernels index a map's plane with int: H * W must stay below 2^31 cells.
inline void check_map_size(int64_t height, int64_t width, size_t level, const char* op) {
  PYDET_CHECK(height * width < (int64_t(1) << 31), op, ": the feature map of level ", level,
              " (", height, "x", width, " cells) is too large (H * W must be < 2^31)");
}

// The forward's maps, each of a size the kernels can index, and contiguous; with
// `keep_channels_last` (the CUDA kernel, which reads either layout) a channels-last map is kept
// as it is rather than copied to NCHW.
inline std::vector<at::Tensor> contiguous_fpn_maps(const at::TensorList features, const char* op,
                                                   bool keep_channels_last = false) {
  std::vector<at::Tensor> maps;
  maps.reserve(features.size());
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    check_map_size(f.size(2), f.size(3), l, op);
    const bool keep =
        f.is_contiguous() ||
        (keep_channels_last && f.is_contiguous(at::MemoryFormat::ChannelsLast));
    maps.push_back(keep ? f : f.contiguous());
  }
  return maps;
}

// The backward's zero gradients, (N, C, H_l, W_l) per level in the accumulation dtype `acc`,
// channels-last with `channels_last`.
inline std::vector<at::Tensor> zero_fpn_grads(const at::Tensor& grad, at::ScalarType acc,
                                              int64_t batch_size, int64_t channels,
                                              at::IntArrayRef heights, at::IntArrayRef widths,
                                              const char* op, bool channels_last = false) {
  std::vector<at::Tensor> grads;
  grads.reserve(heights.size());
  const auto format =
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (size_t l = 0; l < heights.size(); ++l) {
    check_map_size(heights[l], widths[l], l, op);
    grads.push_back(at::empty({batch_size, channels, heights[l], widths[l]},
                              grad.options().dtype(acc), format).zero_());
  }
  return grads;
}

}  // namespace pydetectron
