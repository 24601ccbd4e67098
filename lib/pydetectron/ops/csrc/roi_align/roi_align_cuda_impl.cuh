// The CUDA RoIAlign machinery shared by `roi_align` (every RoI pooled from one feature map) and
// `roi_align_fpn` (each RoI pooled from its own pyramid level): one RoI's work for one block,
// inlined into each op's kernel, so a RoI gets the same arithmetic (and bits) from either op.
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
#pragma once

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "roi_align/roi_align_geometry.h"

namespace pydetectron {
namespace roi_align_cuda {

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

// Where element (c, y, x) of one image lies in its map, in elements from the image's start:
// c * s.c + y * s.y + x * s.x. NCHW maps (contiguous): {H * W, W, 1}; channels-last (NHWC) maps,
// as channels-last convolutions leave the FPN levels: {1, W * C, C}.
struct MapStrides {
  int64_t c, y, x;
};

__host__ __device__ __forceinline__ MapStrides nchw_strides(int64_t height, int64_t width) {
  return {height * width, width, 1};
}

// The forward work of one block: channels [c_begin, c_end) of one RoI with geometry `g`.
// `in` is the RoI's image in its map, (C, H, W) laid out by `s`; `out` the RoI's output,
// (C, PH, PW). A RoI that cannot be pooled (`ok` false: a batch index or level out of range)
// outputs 0.
template <typename scalar_t>
__device__ __forceinline__ void forward_roi(const scalar_t* __restrict__ in,
                                            scalar_t* __restrict__ out,
                                            const RoIAlignGeometry<acc_t<scalar_t>>& g, bool ok,
                                            int64_t height, int64_t width, int pooled_height,
                                            int pooled_width, int64_t c_begin, int64_t c_end,
                                            const MapStrides s) {
  using T = acc_t<scalar_t>;
  const int bins = pooled_height * pooled_width;
  for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    const int ph = bin / pooled_width;
    const int pw = bin - ph * pooled_width;
    if (!ok) {
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y)
        out[c * bins + bin] = static_cast<scalar_t>(0);
      continue;
    }
    if (g.grid_h <= kMaxGrid && g.grid_w <= kMaxGrid) {
      const AxisTaps<T> ty = bin_axis_taps(g.start_h, g.bin_h, ph, g.grid_h, height, false);
      const AxisTaps<T> tx = bin_axis_taps(g.start_w, g.bin_w, pw, g.grid_w, width, false);
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const scalar_t* plane = in + c * s.c;
        T sum = 0;
#pragma unroll
        for (int iy = 0; iy < kMaxGrid; ++iy) {
          if (ty.idx[2 * iy] < 0) continue;
          const scalar_t* row_low = plane + ty.idx[2 * iy] * s.y;
          const scalar_t* row_high = plane + ty.idx[2 * iy + 1] * s.y;
#pragma unroll
          for (int ix = 0; ix < kMaxGrid; ++ix) {
            if (tx.idx[2 * ix] < 0) continue;
            const int64_t x_low = tx.idx[2 * ix] * s.x, x_high = tx.idx[2 * ix + 1] * s.x;
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
        const scalar_t* plane = in + c * s.c;
        T sum = 0;
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisTap<T> ty =
              axis_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
          if (!ty.valid) continue;
          const scalar_t* row_low = plane + ty.low * s.y;
          const scalar_t* row_high = plane + ty.high * s.y;
          for (int ix = 0; ix < g.grid_w; ++ix) {
            const AxisTap<T> tx =
                axis_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
            if (!tx.valid) continue;
            const int64_t x_low = tx.low * s.x, x_high = tx.high * s.x;
            sum += ty.w_low * tx.w_low * static_cast<T>(row_low[x_low]) +
                   ty.w_low * tx.w_high * static_cast<T>(row_low[x_high]) +
                   ty.w_high * tx.w_low * static_cast<T>(row_high[x_low]) +
                   ty.w_high * tx.w_high * static_cast<T>(row_high[x_high]);
          }
        }
        out[c * bins + bin] = static_cast<scalar_t>(sum / g.count);
      }
    }
  }
}

// Adds the gradient `top` of one bin of one channel into `plane` (H x W laid out by `s`,
// accumulation type).
template <typename T>
__device__ __forceinline__ void scatter_bin(T* plane, const MapStrides& s, const AxisTaps<T>& ty,
                                            const AxisTaps<T>& tx, T top) {
#pragma unroll
  for (int r = 0; r < kTaps; ++r) {
    if (ty.w[r] == static_cast<T>(0)) continue;
    T* row = plane + ty.idx[r] * s.y;
    const T gy = top * ty.w[r];
#pragma unroll
    for (int q = 0; q < kTaps; ++q) {
      if (tx.w[q] == static_cast<T>(0)) continue;
      atomic_add(row + tx.idx[q] * s.x, gy * tx.w[q]);
    }
  }
}

template <typename T>
__device__ void scatter_bin_generic(T* plane, int64_t height, int64_t width, const MapStrides& s,
                                    const RoIAlignGeometry<T>& g, int ph, int pw, T top) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const AxisTap<T> ty = axis_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
    if (!ty.valid) continue;
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const AxisTap<T> tx = axis_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
      if (!tx.valid) continue;
      atomic_add(plane + ty.low * s.y + tx.low * s.x, top * (ty.w_low * tx.w_low));
      atomic_add(plane + ty.low * s.y + tx.high * s.x, top * (ty.w_low * tx.w_high));
      atomic_add(plane + ty.high * s.y + tx.low * s.x, top * (ty.w_high * tx.w_low));
      atomic_add(plane + ty.high * s.y + tx.high * s.x, top * (ty.w_high * tx.w_high));
    }
  }
}

// The backward work of one block (the forward layout): channels [c_begin, c_end) of one RoI's
// output gradient `gout` (C, PH, PW) added into `gin`, the (C, H, W) gradient planes of its image
// (laid out by `s`).
// The caller skips RoIs that cannot be pooled.
template <typename scalar_t>
__device__ __forceinline__ void backward_roi(const scalar_t* __restrict__ gout,
                                             acc_t<scalar_t>* __restrict__ gin,
                                             const RoIAlignGeometry<acc_t<scalar_t>>& g,
                                             int64_t height, int64_t width, int pooled_height,
                                             int pooled_width, int64_t c_begin, int64_t c_end,
                                             const MapStrides s) {
  using T = acc_t<scalar_t>;
  const int bins = pooled_height * pooled_width;
  for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    const int ph = bin / pooled_width;
    const int pw = bin - ph * pooled_width;
    if (g.grid_h <= kMaxGrid && g.grid_w <= kMaxGrid) {
      const AxisTaps<T> ty = bin_axis_taps(g.start_h, g.bin_h, ph, g.grid_h, height, true);
      const AxisTaps<T> tx = bin_axis_taps(g.start_w, g.bin_w, pw, g.grid_w, width, true);
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const T top = static_cast<T>(gout[c * bins + bin]) / g.count;
        if (top == static_cast<T>(0)) continue;
        scatter_bin(gin + c * s.c, s, ty, tx, top);
      }
    } else {
      for (int64_t c = c_begin + threadIdx.y; c < c_end; c += blockDim.y) {
        const T top = static_cast<T>(gout[c * bins + bin]) / g.count;
        if (top == static_cast<T>(0)) continue;
        scatter_bin_generic(gin + c * s.c, height, width, s, g, ph, pw, top);
      }
    }
  }
}

// The channel chunk [c_begin, c_end) of block row blockIdx.y.
__device__ __forceinline__ void block_channels(int64_t channels, int64_t& c_begin,
                                               int64_t& c_end) {
  c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerBlock;
  c_end = c_begin + kChannelsPerBlock < channels ? c_begin + kChannelsPerBlock : channels;
}

inline dim3 block_for_bins(int bins) {
  const int x = bins < kThreads ? bins : kThreads;
  return dim3(x, kThreads / x);
}

}  // namespace roi_align_cuda
}  // namespace pydetectron
