// RoIPoolF on the CPU: forward (max with argmax) parallel over RoIs, backward parallel over
// channels (each channel's gradient plane is written by one thread only).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <limits>

#include "common/common.h"
#include "roi_pool/roi_pool.h"

namespace pydetectron {

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale,
                                                        int64_t pooled_height,
                                                        int64_t pooled_width) {
  constexpr const char* op = "roi_pool";
  check_features_and_rois(input, rois, op);
  check_pooled_size(pooled_height, pooled_width, op);
  PYDET_CHECK(input.device().is_cpu(), op, ": the CPU kernel got `input` on ", input.device());

  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  auto output = at::zeros({num_rois, channels, pooled_height, pooled_width}, input.options());
  auto argmax = at::full({num_rois, channels, pooled_height, pooled_width}, -1,
                         input.options().dtype(at::kLong));
  if (num_rois == 0 || output.numel() == 0) return std::make_tuple(output, argmax);

  auto input_c = input.contiguous();
  auto rois_c = rois.to(acc_dtype(input.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cpu", [&] {
    using T = acc_t<scalar_t>;
    const T* r = rois_c.data_ptr<T>();
    check_batch_indices_cpu(r, num_rois, input.size(0), op);
    const scalar_t* in = input_c.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int64_t* amax = argmax.data_ptr<int64_t>();
    const int ph_n = static_cast<int>(pooled_height), pw_n = static_cast<int>(pooled_width);
    const T scale = static_cast<T>(spatial_scale);
    // a RoI: every channel's bins
    at::parallel_for(0, num_rois, grain_for(input.size(1) * ph_n * pw_n), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* roi = r + n * 5;
        const int64_t b = static_cast<int64_t>(roi[0]);
        for (int ph = 0; ph < ph_n; ++ph) {
          for (int pw = 0; pw < pw_n; ++pw) {
            const RoIPoolBin bin = roi_pool_bin(roi, scale, ph_n, pw_n, ph, pw, height, width);
            const bool empty = bin.hend <= bin.hstart || bin.wend <= bin.wstart;
            for (int64_t c = 0; c < channels; ++c) {
              const int64_t plane = (b * channels + c) * height * width;
              const int64_t o = ((n * channels + c) * ph_n + ph) * pw_n + pw;
              if (empty) continue;  // output 0, argmax -1 (already set)
              T maxval = std::numeric_limits<T>::lowest();
              int64_t maxidx = -1;
              for (int64_t h = bin.hstart; h < bin.hend; ++h)
                for (int64_t w = bin.wstart; w < bin.wend; ++w) {
                  const int64_t idx = plane + h * width + w;
                  const T v = static_cast<T>(in[idx]);
                  if (v > maxval) {
                    maxval = v;
                    maxidx = idx;
                  }
                }
              out[o] = static_cast<scalar_t>(maxidx >= 0 ? maxval : static_cast<T>(0));
              amax[o] = maxidx;
            }
          }
        }
      }
    });
  });
  return std::make_tuple(output, argmax);
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& argmax,
                                 int64_t batch_size, int64_t channels, int64_t height,
                                 int64_t width) {
  constexpr const char* op = "roi_pool_backward";
  check_floating(grad, op, "grad");
  check_same_device(grad, "grad", argmax, op, "argmax");
  PYDET_CHECK(grad.device().is_cpu(), op, ": the CPU kernel got `grad` on ", grad.device());
  PYDET_CHECK(argmax.scalar_type() == at::kLong && argmax.sizes() == grad.sizes(), op,
              ": `argmax` must be int64 with the shape of `grad` ", grad.sizes(), ", got ",
              argmax.scalar_type(), " ", argmax.sizes());
  PYDET_CHECK(grad.dim() == 4 && grad.size(1) == channels, op,
              ": `grad` must have shape (K, ", channels, ", PH, PW), got ", grad.sizes());
  const auto acc = acc_dtype(grad.scalar_type());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc));
  if (grad.numel() == 0) return grad_input.to(grad.scalar_type());

  auto grad_c = grad.contiguous();
  auto argmax_c = argmax.contiguous();
  const int64_t num_rois = grad.size(0), bins = grad.size(2) * grad.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* g = grad_c.data_ptr<scalar_t>();
    const int64_t* amax = argmax_c.data_ptr<int64_t>();
    T* gin = grad_input.data_ptr<T>();
    at::parallel_for(0, channels, grain_for(num_rois * bins), [&](int64_t c_begin, int64_t c_end) {
      for (int64_t n = 0; n < num_rois; ++n)
        for (int64_t c = c_begin; c < c_end; ++c)
          for (int64_t i = 0; i < bins; ++i) {
            const int64_t o = (n * channels + c) * bins + i;
            if (amax[o] >= 0) gin[amax[o]] += static_cast<T>(g[o]);
          }
    });
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace pydetectron
