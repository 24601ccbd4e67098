// RoIPoolF on CUDA: one thread per output element (K * C * PH * PW); the backward pass adds each
// bin's gradient at its argmax (atomically: RoIs overlap), accumulating in float32 (float64).
#include <ATen/Dispatch.h>

#include <limits>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "roi_pool/roi_pool.h"

namespace pydetectron {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void roi_pool_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                                        const acc_t<scalar_t>* __restrict__ rois,
                                        scalar_t* __restrict__ output,
                                        int64_t* __restrict__ argmax, int64_t batch_size,
                                        int64_t channels, int64_t height, int64_t width,
                                        int pooled_height, int pooled_width,
                                        acc_t<scalar_t> spatial_scale) {
  using T = acc_t<scalar_t>;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // index = ((n * C + c) * PH + ph) * PW + pw
    const int pw = static_cast<int>(index % pooled_width);
    const int ph = static_cast<int>((index / pooled_width) % pooled_height);
    const int64_t c = (index / (pooled_width * pooled_height)) % channels;
    const int64_t n = index / (pooled_width * pooled_height * channels);
    const T* roi = rois + n * 5;
    const int64_t b = static_cast<int64_t>(roi[0]);
    const RoIPoolBin bin =
        roi_pool_bin(roi, spatial_scale, pooled_height, pooled_width, ph, pw, height, width);
    T maxval = 0;
    int64_t maxidx = -1;
    // An empty bin, or a batch index outside [0, N) (not checked on the GPU), outputs 0.
    if (b >= 0 && b < batch_size && bin.hend > bin.hstart && bin.wend > bin.wstart) {
      maxval = std::numeric_limits<T>::lowest();
      const int64_t plane = (b * channels + c) * height * width;
      for (int64_t h = bin.hstart; h < bin.hend; ++h)
        for (int64_t w = bin.wstart; w < bin.wend; ++w) {
          const int64_t idx = plane + h * width + w;
          const T v = static_cast<T>(input[idx]);
          if (v > maxval) {
            maxval = v;
            maxidx = idx;
          }
        }
      if (maxidx < 0) maxval = 0;
    }
    output[index] = static_cast<scalar_t>(maxval);
    argmax[index] = maxidx;
  }
}

template <typename scalar_t>
__global__ void roi_pool_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                         const int64_t* __restrict__ argmax,
                                         acc_t<scalar_t>* __restrict__ grad_input) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t a = argmax[index];
    if (a >= 0) atomic_add(grad_input + a, static_cast<acc_t<scalar_t>>(grad[index]));
  }
}

int blocks_for(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<int>(blocks < 65536 * 8 ? blocks : 65536 * 8);  // grid-stride beyond
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         double spatial_scale,
                                                         int64_t pooled_height,
                                                         int64_t pooled_width) {
  constexpr const char* op = "roi_pool";
  check_features_and_rois(input, rois, op);
  check_pooled_size(pooled_height, pooled_width, op);
  PYDET_CHECK(input.is_cuda(), op, ": the CUDA kernel got `input` on ", input.device());
  c10::cuda::CUDAGuard device_guard(input.device());

  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  auto output = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());
  auto argmax = at::empty({num_rois, channels, pooled_height, pooled_width},
                          input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total == 0) return std::make_tuple(output, argmax);

  auto input_c = input.contiguous();
  auto rois_c = rois.to(acc_dtype(input.scalar_type())).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    using T = acc_t<scalar_t>;
    roi_pool_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, input_c.data_ptr<scalar_t>(), rois_c.data_ptr<T>(), output.data_ptr<scalar_t>(),
        argmax.data_ptr<int64_t>(), input.size(0), channels, height, width,
        static_cast<int>(pooled_height), static_cast<int>(pooled_width),
        static_cast<T>(spatial_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return std::make_tuple(output, argmax);
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& argmax,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width) {
  constexpr const char* op = "roi_pool_backward";
  check_floating(grad, op, "grad");
  check_same_device(grad, "grad", argmax, op, "argmax");
  PYDET_CHECK(grad.is_cuda(), op, ": the CUDA kernel got `grad` on ", grad.device());
  PYDET_CHECK(argmax.scalar_type() == at::kLong && argmax.sizes() == grad.sizes(), op,
              ": `argmax` must be int64 with the shape of `grad` ", grad.sizes(), ", got ",
              argmax.scalar_type(), " ", argmax.sizes());
  c10::cuda::CUDAGuard device_guard(grad.device());
  const auto acc = acc_dtype(grad.scalar_type());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc));
  const int64_t total = grad.numel();
  if (total == 0) return grad_input.to(grad.scalar_type());

  auto grad_c = grad.contiguous();
  auto argmax_c = argmax.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
    roi_pool_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, grad_c.data_ptr<scalar_t>(), argmax_c.data_ptr<int64_t>(),
        grad_input.data_ptr<acc_t<scalar_t>>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace pydetectron
