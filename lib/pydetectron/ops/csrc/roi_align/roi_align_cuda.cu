// RoIAlign on CUDA, forward and backward, over one feature map. The per-block work (layout,
// register taps, merged atomics; see roi_align_cuda_impl.cuh) is shared with roi_align_fpn.
#include <ATen/Dispatch.h>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_cuda_impl.cuh"
#include "roi_align/roi_align_geometry.h"

namespace pydetectron {
namespace {

using roi_align_cuda::block_for_bins;
using roi_align_cuda::kChannelsPerBlock;
using roi_align_cuda::kThreads;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_forward_kernel(const scalar_t* __restrict__ input,
                             const acc_t<scalar_t>* __restrict__ rois,
                             scalar_t* __restrict__ output, int64_t batch_size, int64_t channels,
                             int64_t height, int64_t width, int pooled_height, int pooled_width,
                             acc_t<scalar_t> spatial_scale, int sampling_ratio, bool aligned) {
  const int64_t n = blockIdx.x;
  int64_t c_begin, c_end;
  roi_align_cuda::block_channels(channels, c_begin, c_end);
  const auto g = roi_align_geometry(rois + n * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned);
  // A batch index outside [0, N) would read out of bounds: such a RoI outputs 0.
  const bool batch_ok = g.batch >= 0 && g.batch < batch_size;
  const scalar_t* in = input + (batch_ok ? g.batch : 0) * channels * height * width;
  scalar_t* out = output + n * channels * pooled_height * pooled_width;
  roi_align_cuda::forward_roi(in, out, g, batch_ok, height, width, pooled_height, pooled_width,
                              c_begin, c_end, roi_align_cuda::nchw_strides(height, width));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_backward_kernel(const scalar_t* __restrict__ grad,
                              const acc_t<scalar_t>* __restrict__ rois,
                              acc_t<scalar_t>* __restrict__ grad_input, int64_t batch_size,
                              int64_t channels, int64_t height, int64_t width, int pooled_height,
                              int pooled_width, acc_t<scalar_t> spatial_scale, int sampling_ratio,
                              bool aligned) {
  const int64_t n = blockIdx.x;
  int64_t c_begin, c_end;
  roi_align_cuda::block_channels(channels, c_begin, c_end);
  const auto g = roi_align_geometry(rois + n * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned);
  if (g.batch < 0 || g.batch >= batch_size) return;
  const scalar_t* gout = grad + n * channels * pooled_height * pooled_width;
  acc_t<scalar_t>* gin = grad_input + g.batch * channels * height * width;
  roi_align_cuda::backward_roi(gout, gin, g, height, width, pooled_height, pooled_width, c_begin,
                               c_end, roi_align_cuda::nchw_strides(height, width));
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  constexpr const char* op = "roi_align";
  check_features_and_rois(input, rois, op);
  check_pooled_size(pooled_height, pooled_width, op);
  PYDET_CHECK(input.is_cuda(), op, ": the CUDA kernel got `input` on ", input.device());
  c10::cuda::CUDAGuard device_guard(input.device());

  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  auto output = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  if (height == 0 || width == 0) return output.zero_();

  PYDET_CHECK(height * width < (int64_t(1) << 31), op, ": a feature map of ", height, "x", width,
              " cells is too large for the CUDA kernel (H * W must be < 2^31)");
  auto input_c = input.contiguous();
  auto rois_c = rois.to(acc_dtype(input.scalar_type())).contiguous();
  const dim3 grid(num_rois, ceil_div(channels, kChannelsPerBlock));
  const dim3 block = block_for_bins(static_cast<int>(pooled_height * pooled_width));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using T = acc_t<scalar_t>;
    roi_align_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        input_c.data_ptr<scalar_t>(), rois_c.data_ptr<T>(), output.data_ptr<scalar_t>(),
        input.size(0), channels, height, width, static_cast<int>(pooled_height),
        static_cast<int>(pooled_width), static_cast<T>(spatial_scale),
        static_cast<int>(sampling_ratio), aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned) {
  constexpr const char* op = "roi_align_backward";
  check_floating(grad, op, "grad");
  check_floating(rois, op, "rois");
  check_same_device(grad, "grad", rois, op, "rois");
  PYDET_CHECK(grad.is_cuda(), op, ": the CUDA kernel got `grad` on ", grad.device());
  PYDET_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, PH, PW) = (", rois.size(0), ", ", channels,
              ", ", pooled_height, ", ", pooled_width, "), got ", grad.sizes());
  c10::cuda::CUDAGuard device_guard(grad.device());

  const auto acc = acc_dtype(grad.scalar_type());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc));
  const int64_t num_rois = rois.size(0);
  if (num_rois == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());

  PYDET_CHECK(height * width < (int64_t(1) << 31), op, ": a feature map of ", height, "x", width,
              " cells is too large for the CUDA kernel (H * W must be < 2^31)");
  auto grad_c = grad.contiguous();
  auto rois_c = rois.to(acc).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using T = acc_t<scalar_t>;
    const dim3 grid(num_rois, ceil_div(channels, kChannelsPerBlock));
    const dim3 block = block_for_bins(static_cast<int>(pooled_height * pooled_width));
    roi_align_backward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<T>(), grad_input.data_ptr<T>(),
        batch_size, channels, height, width, static_cast<int>(pooled_height),
        static_cast<int>(pooled_width), static_cast<T>(spatial_scale),
        static_cast<int>(sampling_ratio), aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace pydetectron
