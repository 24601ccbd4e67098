// RoIAlign on the CPU (forward and backward), parallel with ATen's OpenMP thread pool. The
// kernels (Caffe2's per-sample table, channels in blocks) are in roi_align_cpu_impl.h, shared
// with roi_align_fpn; here they run over one feature map.
#include <ATen/Dispatch.h>

#include "common/common.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_cpu_impl.h"

namespace pydetectron {

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height,
                                 int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  constexpr const char* op = "roi_align";
  check_features_and_rois(input, rois, op);
  check_pooled_size(pooled_height, pooled_width, op);
  PYDET_CHECK(input.device().is_cpu(), op, ": the CPU kernel got `input` on ", input.device());

  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  auto output = at::zeros({num_rois, channels, pooled_height, pooled_width}, input.options());
  if (num_rois == 0 || output.numel() == 0 || height == 0 || width == 0) return output;

  PYDET_CHECK(height * width < (int64_t(1) << 31), op, ": a feature map of ", height, "x", width,
              " cells is too large (H * W must be < 2^31)");
  auto input_c = input.contiguous();
  auto rois_c = rois.to(acc_dtype(input.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    using T = acc_t<scalar_t>;
    check_batch_indices_cpu(rois_c.data_ptr<T>(), num_rois, input.size(0), op);
    const roi_align_cpu::MapShape<T> map{height, width, static_cast<T>(spatial_scale)};
    const scalar_t* data = input_c.data_ptr<scalar_t>();
    roi_align_cpu::forward<scalar_t>(&data, &map, rois_c.data_ptr<T>(), nullptr, num_rois,
                                     channels, static_cast<int>(pooled_height),
                                     static_cast<int>(pooled_width),
                                     static_cast<int>(sampling_ratio), aligned,
                                     output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  constexpr const char* op = "roi_align_backward";
  check_floating(grad, op, "grad");
  check_floating(rois, op, "rois");
  check_same_device(grad, "grad", rois, op, "rois");
  PYDET_CHECK(grad.device().is_cpu(), op, ": the CPU kernel got `grad` on ", grad.device());
  PYDET_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, PH, PW) = (", rois.size(0), ", ", channels,
              ", ", pooled_height, ", ", pooled_width, "), got ", grad.sizes());

  const auto acc = acc_dtype(grad.scalar_type());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc));
  const int64_t num_rois = rois.size(0);
  if (num_rois == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());

  auto grad_c = grad.contiguous();
  auto rois_c = rois.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    check_batch_indices_cpu(rois_c.data_ptr<T>(), num_rois, batch_size, op);
    const roi_align_cpu::MapShape<T> map{height, width, static_cast<T>(spatial_scale)};
    T* grad_data = grad_input.data_ptr<T>();
    roi_align_cpu::backward<scalar_t>(grad_c.data_ptr<scalar_t>(), &map, rois_c.data_ptr<T>(),
                                      nullptr, num_rois, channels,
                                      static_cast<int>(pooled_height),
                                      static_cast<int>(pooled_width),
                                      static_cast<int>(sampling_ratio), aligned, &grad_data);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace pydetectron
