// RoIAlign over a feature pyramid on CUDA: one launch for all RoIs of all levels. Block
// (n, chunk) reads RoI n's level from `levels` and runs `roi_align`'s per-block work
// (roi_align_cuda_impl.cuh) on that level's map, so the forward output of a RoI has the same bits
// as `roi_align` of it on its level. The maps' pointers, sizes and scales travel in a struct
// passed by value (kernel parameters), so nothing is copied to the device or read back: no host
// synchronisation. A level index outside [0, L) cannot raise here without one: such a RoI
// outputs 0 and passes no gradient back (as a batch index outside [0, N) does).
// The maps may be NCHW or channels-last (NHWC, as channels-last convolutions leave the FPN
// levels): each level is read in its own layout (its strides travel with it), with no copy to
// NCHW, and the backward pass writes channels-last gradients for channels-last levels, so that
// they add to the other branches' gradients of those levels without a change of layout.
#include <ATen/Dispatch.h>

#include <vector>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "roi_align/roi_align_cuda_impl.cuh"
#include "roi_align/roi_align_fpn.h"
#include "roi_align/roi_align_geometry.h"

namespace pydetectron {
namespace {

using roi_align_cuda::block_for_bins;
using roi_align_cuda::kChannelsPerBlock;
using roi_align_cuda::kThreads;

// The pyramid as kernel parameters: level l's data (features, or gradients), size, layout (the
// stride between images, and the element strides of an image) and scale.
template <typename P, typename T>
struct FpnMaps {
  P data[kMaxFpnLevels];
  int64_t height[kMaxFpnLevels];
  int64_t width[kMaxFpnLevels];
  int64_t image_stride[kMaxFpnLevels];
  roi_align_cuda::MapStrides strides[kMaxFpnLevels];
  T spatial_scale[kMaxFpnLevels];
  int num_levels;
};

// Level l of `maps` from tensor `t` (N, C, H, W), in whatever layout its strides give.
template <typename P, typename T, typename D>
void set_level(FpnMaps<P, T>& maps, int64_t l, D data, const at::Tensor& t, double scale) {
  maps.data[l] = data;
  maps.height[l] = t.size(2);
  maps.width[l] = t.size(3);
  maps.image_stride[l] = t.stride(0);
  maps.strides[l] = {t.stride(1), t.stride(2), t.stride(3)};
  maps.spatial_scale[l] = static_cast<T>(scale);
}

// RoI n's level (0 when out of range, with `ok` false) and whether its map can be read.
template <typename P, typename T>
__device__ __forceinline__ int roi_level(const FpnMaps<P, T>& maps, const int64_t* levels,
                                         int64_t n, bool& ok) {
  const int64_t l = levels[n];
  ok = l >= 0 && l < maps.num_levels;
  const int li = ok ? static_cast<int>(l) : 0;
  ok = ok && maps.height[li] > 0 && maps.width[li] > 0;
  return li;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_fpn_forward_kernel(const FpnMaps<const scalar_t*, acc_t<scalar_t>> maps,
                                 const acc_t<scalar_t>* __restrict__ rois,
                                 const int64_t* __restrict__ levels,
                                 scalar_t* __restrict__ output, int64_t batch_size,
                                 int64_t channels, int pooled_height, int pooled_width,
                                 int sampling_ratio, bool aligned) {
  const int64_t n = blockIdx.x;
  int64_t c_begin, c_end;
  roi_align_cuda::block_channels(channels, c_begin, c_end);
  bool ok;
  const int l = roi_level(maps, levels, n, ok);
  const int64_t height = maps.height[l], width = maps.width[l];
  const auto g = roi_align_geometry(rois + n * 5, maps.spatial_scale[l], pooled_height,
                                    pooled_width, sampling_ratio, aligned);
  ok = ok && g.batch >= 0 && g.batch < batch_size;
  const scalar_t* in = maps.data[l] + (ok ? g.batch : 0) * maps.image_stride[l];
  scalar_t* out = output + n * channels * pooled_height * pooled_width;
  roi_align_cuda::forward_roi(in, out, g, ok, height, width, pooled_height, pooled_width,
                              c_begin, c_end, maps.strides[l]);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_fpn_backward_kernel(const FpnMaps<acc_t<scalar_t>*, acc_t<scalar_t>> maps,
                                  const scalar_t* __restrict__ grad,
                                  const acc_t<scalar_t>* __restrict__ rois,
                                  const int64_t* __restrict__ levels, int64_t batch_size,
                                  int64_t channels, int pooled_height, int pooled_width,
                                  int sampling_ratio, bool aligned) {
  const int64_t n = blockIdx.x;
  int64_t c_begin, c_end;
  roi_align_cuda::block_channels(channels, c_begin, c_end);
  bool ok;
  const int l = roi_level(maps, levels, n, ok);
  if (!ok) return;
  const int64_t height = maps.height[l], width = maps.width[l];
  const auto g = roi_align_geometry(rois + n * 5, maps.spatial_scale[l], pooled_height,
                                    pooled_width, sampling_ratio, aligned);
  if (g.batch < 0 || g.batch >= batch_size) return;
  const scalar_t* gout = grad + n * channels * pooled_height * pooled_width;
  acc_t<scalar_t>* gin = maps.data[l] + g.batch * maps.image_stride[l];
  roi_align_cuda::backward_roi(gout, gin, g, height, width, pooled_height, pooled_width, c_begin,
                               c_end, maps.strides[l]);
}

}  // namespace

at::Tensor roi_align_fpn_forward_cuda(const at::TensorList features, const at::Tensor& rois,
                                      const at::Tensor& levels,
                                      at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  constexpr const char* op = "roi_align_fpn";
  check_fpn_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width, op);
  PYDET_CHECK(features[0].is_cuda(), op, ": the CUDA kernel got `features` on ",
              features[0].device());
  c10::cuda::CUDAGuard device_guard(features[0].device());

  const int64_t num_rois = rois.size(0);
  const int64_t batch_size = features[0].size(0), channels = features[0].size(1);
  auto output = at::empty({num_rois, channels, pooled_height, pooled_width},
                          features[0].options());
  if (output.numel() == 0) return output;

  const std::vector<at::Tensor> inputs = contiguous_fpn_maps(features, op, true);
  const auto dtype = features[0].scalar_type();
  auto rois_c = rois.to(acc_dtype(dtype)).contiguous();
  auto levels_c = levels.contiguous();
  const dim3 grid(num_rois, ceil_div(channels, kChannelsPerBlock));
  const dim3 block = block_for_bins(static_cast<int>(pooled_height * pooled_width));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, dtype, "roi_align_fpn_forward_cuda", [&] {
    using T = acc_t<scalar_t>;
    FpnMaps<const scalar_t*, T> maps{};
    maps.num_levels = static_cast<int>(inputs.size());
    for (size_t l = 0; l < inputs.size(); ++l)
      set_level(maps, l, inputs[l].data_ptr<scalar_t>(), inputs[l], spatial_scales[l]);
    roi_align_fpn_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        maps, rois_c.data_ptr<T>(), levels_c.data_ptr<int64_t>(), output.data_ptr<scalar_t>(),
        batch_size, channels, static_cast<int>(pooled_height), static_cast<int>(pooled_width),
        static_cast<int>(sampling_ratio), aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> roi_align_fpn_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t sampling_ratio, bool aligned, bool channels_last) {
  constexpr const char* op = "roi_align_fpn_backward";
  check_fpn_backward_inputs(grad, rois, levels, spatial_scales, pooled_height, pooled_width,
                            channels, heights, widths, op);
  PYDET_CHECK(grad.is_cuda(), op, ": the CUDA kernel got `grad` on ", grad.device());
  c10::cuda::CUDAGuard device_guard(grad.device());

  const int64_t num_levels = static_cast<int64_t>(heights.size());
  const int64_t num_rois = rois.size(0);
  const auto acc = acc_dtype(grad.scalar_type());
  std::vector<at::Tensor> grad_inputs =
      zero_fpn_grads(grad, acc, batch_size, channels, heights, widths, op, channels_last);
  if (num_rois > 0 && channels > 0 && batch_size > 0) {
    auto grad_c = grad.contiguous();
    auto rois_c = rois.to(acc).contiguous();
    auto levels_c = levels.contiguous();
    const dim3 grid(num_rois, ceil_div(channels, kChannelsPerBlock));
    const dim3 block = block_for_bins(static_cast<int>(pooled_height * pooled_width));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_fpn_backward_cuda", [&] {
      using T = acc_t<scalar_t>;
      FpnMaps<T*, T> maps{};
      maps.num_levels = static_cast<int>(num_levels);
      for (int64_t l = 0; l < num_levels; ++l)
        set_level(maps, l, grad_inputs[l].data_ptr<T>(), grad_inputs[l], spatial_scales[l]);
      roi_align_fpn_backward_kernel<scalar_t><<<grid, block, 0, stream>>>(
          maps, grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<T>(), levels_c.data_ptr<int64_t>(),
          batch_size, channels, static_cast<int>(pooled_height), static_cast<int>(pooled_width),
          static_cast<int>(sampling_ratio), aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  for (auto& g : grad_inputs) g = g.to(grad.scalar_type());   // (the layout is kept)
  return grad_inputs;
}

}  // namespace pydetectron
