// RoIAlign over a feature pyramid on the CPU: the kernels of roi_align_cpu_impl.h (those of
// `roi_align`), with each RoI reading the map its level names, so each RoI's output and its
// gradient contributions are computed exactly as `roi_align` on that level computes them (and a
// level's gradient sums its RoIs in input order, as the per-level call does).
#include <ATen/Dispatch.h>

#include <vector>

#include "common/common.h"
#include "roi_align/roi_align_cpu_impl.h"
#include "roi_align/roi_align_fpn.h"

namespace pydetectron {
namespace {

void check_levels_cpu(const int64_t* levels, int64_t num_rois, int64_t num_levels,
                      const char* op) {
  for (int64_t n = 0; n < num_rois; ++n) {
    PYDET_CHECK(levels[n] >= 0 && levels[n] < num_levels, op, ": `levels[", n, "]` is ",
                levels[n], " but `features` has ", num_levels,
                " levels (an index in [0, L) is expected)");
  }
}

}  // namespace

at::Tensor roi_align_fpn_forward_cpu(const at::TensorList features, const at::Tensor& rois,
                                     const at::Tensor& levels,
                                     at::ArrayRef<double> spatial_scales,
                                     int64_t pooled_height, int64_t pooled_width,
                                     int64_t sampling_ratio, bool aligned) {
  constexpr const char* op = "roi_align_fpn";
  check_fpn_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width, op);
  PYDET_CHECK(features[0].device().is_cpu(), op, ": the CPU kernel got `features` on ",
              features[0].device());

  const int64_t num_levels = static_cast<int64_t>(features.size());
  const int64_t num_rois = rois.size(0);
  const int64_t batch_size = features[0].size(0), channels = features[0].size(1);
  auto output = at::zeros({num_rois, channels, pooled_height, pooled_width},
                          features[0].options());
  if (output.numel() == 0) return output;

  const std::vector<at::Tensor> inputs = contiguous_fpn_maps(features, op);
  auto levels_c = levels.contiguous();
  check_levels_cpu(levels_c.data_ptr<int64_t>(), num_rois, num_levels, op);
  const auto dtype = features[0].scalar_type();
  auto rois_c = rois.to(acc_dtype(dtype)).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, dtype, "roi_align_fpn_forward_cpu", [&] {
    using T = acc_t<scalar_t>;
    check_batch_indices_cpu(rois_c.data_ptr<T>(), num_rois, batch_size, op);
    std::vector<roi_align_cpu::MapShape<T>> maps(inputs.size());
    std::vector<const scalar_t*> data(inputs.size());
    for (size_t l = 0; l < inputs.size(); ++l) {
      maps[l] = {inputs[l].size(2), inputs[l].size(3), static_cast<T>(spatial_scales[l])};
      data[l] = inputs[l].data_ptr<scalar_t>();
    }
    roi_align_cpu::forward<scalar_t>(data.data(), maps.data(), rois_c.data_ptr<T>(),
                                     levels_c.data_ptr<int64_t>(), num_rois, channels,
                                     static_cast<int>(pooled_height),
                                     static_cast<int>(pooled_width),
                                     static_cast<int>(sampling_ratio), aligned,
                                     output.data_ptr<scalar_t>());
  });
  return output;
}

std::vector<at::Tensor> roi_align_fpn_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t sampling_ratio, bool aligned, bool channels_last) {
  constexpr const char* op = "roi_align_fpn_backward";
  check_fpn_backward_inputs(grad, rois, levels, spatial_scales, pooled_height, pooled_width,
                            channels, heights, widths, op);
  PYDET_CHECK(grad.device().is_cpu(), op, ": the CPU kernel got `grad` on ", grad.device());

  const int64_t num_levels = static_cast<int64_t>(heights.size());
  const int64_t num_rois = rois.size(0);
  const auto acc = acc_dtype(grad.scalar_type());
  std::vector<at::Tensor> grad_inputs =
      zero_fpn_grads(grad, acc, batch_size, channels, heights, widths, op);
  if (num_rois > 0 && channels > 0) {
    auto grad_c = grad.contiguous();
    auto levels_c = levels.contiguous();
    check_levels_cpu(levels_c.data_ptr<int64_t>(), num_rois, num_levels, op);
    auto rois_c = rois.to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_fpn_backward_cpu", [&] {
      using T = acc_t<scalar_t>;
      check_batch_indices_cpu(rois_c.data_ptr<T>(), num_rois, batch_size, op);
      std::vector<roi_align_cpu::MapShape<T>> maps(num_levels);
      std::vector<T*> data(num_levels);
      for (int64_t l = 0; l < num_levels; ++l) {
        maps[l] = {heights[l], widths[l], static_cast<T>(spatial_scales[l])};
        data[l] = grad_inputs[l].data_ptr<T>();
      }
      roi_align_cpu::backward<scalar_t>(grad_c.data_ptr<scalar_t>(), maps.data(),
                                        rois_c.data_ptr<T>(), levels_c.data_ptr<int64_t>(),
                                        num_rois, channels, static_cast<int>(pooled_height),
                                        static_cast<int>(pooled_width),
                                        static_cast<int>(sampling_ratio), aligned, data.data());
    });
  }
  // (accumulated NCHW here; channels-last when the forward's maps were, as on CUDA)
  for (auto& g : grad_inputs) {
    g = g.to(grad.scalar_type());
    if (channels_last) g = g.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return grad_inputs;
}

}  // namespace pydetectron
