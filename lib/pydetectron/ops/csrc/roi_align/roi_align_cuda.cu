// RoIAlign on CUDA, forward and backward.
//
// Work layout: one block per (RoI, chunk of kChannelsPerBlock channels). threadIdx.x walks the
// output bins of the RoI and threadIdx.y the channels of the chunk, so a thread computes the taps
// of its bin (rows, columns and bilinear weights of every sample) once and reuses them for each
// channel it visits, and no flat index is ever divided back into (n, c, ph, pw). A warp covers
// consecutive bins of one channel: neighbouring lanes read (or add to) neighbouring pixels.
//
// When a bin has at most 2 x 2 samples (sampling_ratio 1 or 2, or small adaptive grids) the taps
// stay in registers. The backward pass then merges the taps that land on the same row or column
// (the weight of pixel (r, c) is Wy(r) * Wx(c), Caffe2's w = wy * wx summed over samples) so that
// each distinct pixel gets one atomicAdd. Gradients accumulate in float32 (float64 for float64).
// (Measured on an H100: this layout beat one with channels along the warp lanes, 2.0 ms against
// 4.7 ms for the benchmark's forward+backward; see BENCHMARK.md.)
#include <ATen/Dispatch.h>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_geometry.h"


namespace pydetectron {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 64;
constexpr int kMaxGrid = 2;  // samples per axis kept in registers
constexpr int kTaps = 2 * kMaxGrid;

// Rows (or columns) touched by the <= kMaxGrid samples of a bin along one axis, with their summed
// weights; an unused slot has weight 0. `merge` folds repeated indices into their first slot.
template <typename T>
struct AxisTaps {
  int idx[kTaps];  // a row or column index (< 2^31, checked on the host)
  T w[kTaps];
};

template <typename T>
__device__ __forceinline__ AxisTaps<T> bin_axis_taps(T start, T bin_size, int p, int grid,
                                                     int64_t size, bool merge) {
  AxisTaps<T> a;
#pragma unroll
  for (int i = 0; i < kMaxGrid; ++i) {
    a.idx[2 * i] = a.idx[2 * i + 1] = -1;
    a.w[2 * i] = a.w[2 * i + 1] = static_cast<T>(0);
    if (i < grid) {
      const AxisTap<T> t = axis_tap(sample_coord(start, bin_size, p, i, grid), size);
      if (t.valid) {
        a.idx[2 * i] = static_cast<int>(t.low);
        a.w[2 * i] = t.w_low;
        a.idx[2 * i + 1] = static_cast<int>(t.high);
        a.w[2 * i + 1] = t.w_high;
      }
    }
  }
  if (merge) {
#pragma unroll
    for (int k = 1; k < kTaps; ++k) {
#pragma unroll
      for (int j = 0; j < k; ++j) {
        if (a.w[k] != static_cast<T>(0) && a.idx[j] == a.idx[k]) {
          a.w[j] += a.w[k];
          a.w[k] = static_cast<T>(0);
        }
      }
    }
  }
  return a;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_forward_kernel(const scalar_t* __restrict__ input,
                             const acc_t<scalar_t>* __restrict__ rois,
                             scalar_t* __restrict__ output, int64_t batch_size, int64_t channels,
                             int64_t height, int64_t width, int pooled_height, int pooled_width,
                             acc_t<scalar_t> spatial_scale, int sampling_ratio, bool aligned) {
  using T = acc_t<scalar_t>;
  const int64_t n = blockIdx.x;
  const int bins = pooled_height * pooled_width;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerBlock;
  const int64_t c_end = c_begin + kChannelsPerBlock < channels ? c_begin + kChannelsPerBlock
                                                               : channels;
  const auto g = roi_align_geometry(rois + n * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned);
  const int64_t plane_size = height * width;
  scalar_t* out = output + n * channels * bins;
  // A batch index outside [0, N) would read out of bounds: such a RoI outputs 0.
  const bool batch_ok = g.batch >= 0 && g.batch < batch_size;
  const scalar_t* in = input + (batch_ok ? g.batch : 0) * channels * plane_size;

  for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    const int ph = bin / pooled_width;
    const int pw = bin - ph * pooled_width;
    if (!batch_ok) {
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y)
        out[c * bins + bin] = static_cast<scalar_t>(0);
      continue;
    }
    if (g.grid_h <= kMaxGrid && g.grid_w <= kMaxGrid) {
      const AxisTaps<T> ty = bin_axis_taps(g.start_h, g.bin_h, ph, g.grid_h, height, false);
      const AxisTaps<T> tx = bin_axis_taps(g.start_w, g.bin_w, pw, g.grid_w, width, false);
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const scalar_t* plane = in + c * plane_size;
        T sum = 0;
#pragma unroll
        for (int iy = 0; iy < kMaxGrid; ++iy) {
          if (ty.idx[2 * iy] < 0) continue;
          const scalar_t* row_low = plane + ty.idx[2 * iy] * static_cast<int>(width);
          const scalar_t* row_high = plane + ty.idx[2 * iy + 1] * static_cast<int>(width);
#pragma unroll
          for (int ix = 0; ix < kMaxGrid; ++ix) {
            if (tx.idx[2 * ix] < 0) continue;
            const int x_low = tx.idx[2 * ix], x_high = tx.idx[2 * ix + 1];
            sum += ty.w[2 * iy] * tx.w[2 * ix] * static_cast<T>(row_low[x_low]) +
                   ty.w[2 * iy] * tx.w[2 * ix + 1] * static_cast<T>(row_low[x_high]) +
                   ty.w[2 * iy + 1] * tx.w[2 * ix] * static_cast<T>(row_high[x_low]) +
                   ty.w[2 * iy + 1] * tx.w[2 * ix + 1] * static_cast<T>(row_high[x_high]);
          }
        }
        out[c * bins + bin] = static_cast<scalar_t>(sum / g.count);
      }
    } else {
      // Large adaptive grids: taps recomputed per channel (they do not fit in registers).
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const scalar_t* plane = in + c * plane_size;
        T sum = 0;
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisTap<T> ty = axis_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
          if (!ty.valid) continue;
          const scalar_t* row_low = plane + ty.low * width;
          const scalar_t* row_high = plane + ty.high * width;
          for (int ix = 0; ix < g.grid_w; ++ix) {
            const AxisTap<T> tx = axis_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
            if (!tx.valid) continue;
            sum += ty.w_low * tx.w_low * static_cast<T>(row_low[tx.low]) +
                   ty.w_low * tx.w_high * static_cast<T>(row_low[tx.high]) +
                   ty.w_high * tx.w_low * static_cast<T>(row_high[tx.low]) +
                   ty.w_high * tx.w_high * static_cast<T>(row_high[tx.high]);
          }
        }
        out[c * bins + bin] = static_cast<scalar_t>(sum / g.count);
      }
    }
  }
}

// Adds the gradient `top` of one bin of one channel into `plane` (H x W, accumulation type).
template <typename T>
__device__ __forceinline__ void scatter_bin(T* plane, int64_t width, const AxisTaps<T>& ty,
                                            const AxisTaps<T>& tx, T top) {
#pragma unroll
  for (int r = 0; r < kTaps; ++r) {
    if (ty.w[r] == static_cast<T>(0)) continue;
    T* row = plane + ty.idx[r] * static_cast<int>(width);
    const T gy = top * ty.w[r];
#pragma unroll
    for (int q = 0; q < kTaps; ++q) {
      if (tx.w[q] == static_cast<T>(0)) continue;
      atomic_add(row + tx.idx[q], gy * tx.w[q]);
    }
  }
}

template <typename T>
__device__ void scatter_bin_generic(T* plane, int64_t height, int64_t width,
                                    const RoIAlignGeometry<T>& g, int ph, int pw, T top) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const AxisTap<T> ty = axis_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
    if (!ty.valid) continue;
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const AxisTap<T> tx = axis_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
      if (!tx.valid) continue;
      atomic_add(plane + ty.low * width + tx.low, top * (ty.w_low * tx.w_low));
      atomic_add(plane + ty.low * width + tx.high, top * (ty.w_low * tx.w_high));
      atomic_add(plane + ty.high * width + tx.low, top * (ty.w_high * tx.w_low));
      atomic_add(plane + ty.high * width + tx.high, top * (ty.w_high * tx.w_high));
    }
  }
}

// Bins along threadIdx.x, channels along threadIdx.y (the forward layout).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_backward_kernel(const scalar_t* __restrict__ grad,
                              const acc_t<scalar_t>* __restrict__ rois,
                              acc_t<scalar_t>* __restrict__ grad_input, int64_t batch_size,
                              int64_t channels, int64_t height, int64_t width, int pooled_height,
                              int pooled_width, acc_t<scalar_t> spatial_scale, int sampling_ratio,
                              bool aligned) {
  using T = acc_t<scalar_t>;
  const int64_t n = blockIdx.x;
  const int bins = pooled_height * pooled_width;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerBlock;
  const int64_t c_end = c_begin + kChannelsPerBlock < channels ? c_begin + kChannelsPerBlock
                                                               : channels;
  const auto g = roi_align_geometry(rois + n * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned);
  if (g.batch < 0 || g.batch >= batch_size) return;
  const int64_t plane_size = height * width;
  const scalar_t* gout = grad + n * channels * bins;
  T* gin = grad_input + g.batch * channels * plane_size;

  for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    const int ph = bin / pooled_width;
    const int pw = bin - ph * pooled_width;
    if (g.grid_h <= kMaxGrid && g.grid_w <= kMaxGrid) {
      const AxisTaps<T> ty = bin_axis_taps(g.start_h, g.bin_h, ph, g.grid_h, height, true);
      const AxisTaps<T> tx = bin_axis_taps(g.start_w, g.bin_w, pw, g.grid_w, width, true);
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const T top = static_cast<T>(gout[c * bins + bin]) / g.count;
        if (top == static_cast<T>(0)) continue;
        scatter_bin(gin + c * plane_size, width, ty, tx, top);
      }
    } else {
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const T top = static_cast<T>(gout[c * bins + bin]) / g.count;
        if (top == static_cast<T>(0)) continue;
        scatter_bin_generic(gin + c * plane_size, height, width, g, ph, pw, top);
      }
    }
  }
}

dim3 block_for_bins(int bins) {
  const int x = bins < kThreads ? bins : kThreads;
  return dim3(x, kThreads / x);
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
