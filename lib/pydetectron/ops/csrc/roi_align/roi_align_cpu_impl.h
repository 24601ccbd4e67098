// The CPU RoIAlign machinery shared by `roi_align` (every RoI pooled from one feature map) and
// `roi_align_fpn` (each RoI pooled from its own pyramid level). Both run the same code, so a RoI
// gets the same bits from either op.
//
// The taps of a RoI (the rows and columns each sample reads, with their weights) are computed once
// per RoI and reused for every channel: separably (PH*grid_h row taps + PW*grid_w column taps),
// and for the forward pass expanded into Caffe2's per-sample `pre_calc` table (four offsets and
// four weights per sample). Work is split over channels, so each thread reads (and in the
// backward pass writes) its own feature planes while all RoIs visit them. Every map has the same
// N and C, so a channel block spans all of them.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/common.h"
#include "roi_align/roi_align_geometry.h"

namespace pydetectron {
namespace roi_align_cpu {

// One feature map as the kernels see it: `roi_align` has one, `roi_align_fpn` one per level.
template <typename T>
struct MapShape {
  int64_t height;
  int64_t width;
  T spatial_scale;
};

// Taps of every RoI, computed once (in parallel over RoIs) and shared by all channels.
template <typename T>
struct AllTaps {
  std::vector<RoIAlignGeometry<T>> geometry;  // per RoI
  std::vector<int> map;                       // per RoI: the index of the map it reads
  std::vector<size_t> y_offset, x_offset;     // per RoI, into ytaps / xtaps
  std::vector<AxisTap<T>> ytaps, xtaps;       // PH * grid_h and PW * grid_w per RoI
};

// `map_of` (K,) picks each RoI's map in `maps` (validated by the caller); nullptr: all read
// maps[0]. A RoI on an empty map (H or W = 0) gets no samples: it pools 0 and passes back nothing.
template <typename T>
void compute_all_taps(const T* rois, const int64_t* map_of, const MapShape<T>* maps,
                      int64_t num_rois, int pooled_height, int pooled_width, int sampling_ratio,
                      bool aligned, AllTaps<T>& taps) {
  taps.geometry.resize(num_rois);
  taps.map.resize(num_rois);
  taps.y_offset.resize(num_rois + 1);
  taps.x_offset.resize(num_rois + 1);
  taps.y_offset[0] = taps.x_offset[0] = 0;
  for (int64_t n = 0; n < num_rois; ++n) {
    const int m = map_of != nullptr ? static_cast<int>(map_of[n]) : 0;
    const MapShape<T>& s = maps[m];
    auto g = roi_align_geometry(rois + n * 5, s.spatial_scale, pooled_height, pooled_width,
                                sampling_ratio, aligned);
    if (s.height == 0 || s.width == 0) g.grid_h = g.grid_w = 0;
    taps.geometry[n] = g;
    taps.map[n] = m;
    taps.y_offset[n + 1] = taps.y_offset[n] + static_cast<size_t>(pooled_height) * g.grid_h;
    taps.x_offset[n + 1] = taps.x_offset[n] + static_cast<size_t>(pooled_width) * g.grid_w;
  }
  taps.ytaps.resize(taps.y_offset[num_rois]);
  taps.xtaps.resize(taps.x_offset[num_rois]);
  // a RoI: its axis taps, about 2 (a 2x2 sampling grid) per bin row and column
  at::parallel_for(0, num_rois, grain_for(2 * (pooled_height + pooled_width)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const auto& g = taps.geometry[n];
      const MapShape<T>& s = maps[taps.map[n]];
      AxisTap<T>* ty = taps.ytaps.data() + taps.y_offset[n];
      AxisTap<T>* tx = taps.xtaps.data() + taps.x_offset[n];
      for (int ph = 0; ph < pooled_height; ++ph)
        for (int iy = 0; iy < g.grid_h; ++iy)
          ty[ph * g.grid_h + iy] =
              axis_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), s.height);
      for (int pw = 0; pw < pooled_width; ++pw)
        for (int ix = 0; ix < g.grid_w; ++ix)
          tx[pw * g.grid_w + ix] =
              axis_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), s.width);
    }
  });
}

// Caffe2's `pre_calc` table: for every sample of every bin of every RoI, the four plane offsets
// it reads and their weights (w = wy * wx, Caffe2's products), -1 for a sample outside the map.
template <typename T>
struct SampleTaps {
  int32_t pos[4];
  T w[4];
};

// Table of RoIs [n_begin, n_end); offset[n - n_begin] is where RoI n's samples start.
template <typename T>
void build_sample_taps(const AllTaps<T>& taps, const MapShape<T>* maps, int64_t n_begin,
                       int64_t n_end, int pooled_height, int pooled_width,
                       std::vector<size_t>& offset, std::vector<SampleTaps<T>>& table) {
  const int bins = pooled_height * pooled_width;
  offset.resize(n_end - n_begin + 1);
  offset[0] = 0;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const auto& g = taps.geometry[n];
    offset[n - n_begin + 1] = offset[n - n_begin] + static_cast<size_t>(bins) * g.grid_h * g.grid_w;
  }
  table.resize(offset[n_end - n_begin]);
  // a RoI: about 4 samples per bin
  at::parallel_for(n_begin, n_end, grain_for(4 * bins), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const auto& g = taps.geometry[n];
      const int64_t width = maps[taps.map[n]].width;
      const AxisTap<T>* ytaps = taps.ytaps.data() + taps.y_offset[n];
      const AxisTap<T>* xtaps = taps.xtaps.data() + taps.x_offset[n];
      SampleTaps<T>* out = table.data() + offset[n - n_begin];
      for (int ph = 0; ph < pooled_height; ++ph)
        for (int pw = 0; pw < pooled_width; ++pw)
          for (int iy = 0; iy < g.grid_h; ++iy)
            for (int ix = 0; ix < g.grid_w; ++ix) {
              const AxisTap<T>& ty = ytaps[ph * g.grid_h + iy];
              const AxisTap<T>& tx = xtaps[pw * g.grid_w + ix];
              SampleTaps<T>& st = *out++;
              if (!ty.valid || !tx.valid) {
                st.pos[0] = -1;
                continue;
              }
              st.pos[0] = static_cast<int32_t>(ty.low * width + tx.low);
              st.pos[1] = static_cast<int32_t>(ty.low * width + tx.high);
              st.pos[2] = static_cast<int32_t>(ty.high * width + tx.low);
              st.pos[3] = static_cast<int32_t>(ty.high * width + tx.high);
              st.w[0] = ty.w_low * tx.w_low;
              st.w[1] = ty.w_low * tx.w_high;
              st.w[2] = ty.w_high * tx.w_low;
              st.w[3] = ty.w_high * tx.w_high;
            }
    }
  });
}

// Each thread owns blocks of kChannelBlock channels and visits every RoI with them: a sample's
// offsets and weights are read once for the whole block, and the block's feature planes stay in
// cache while all RoIs read them (in NCHW each channel is its own plane).
constexpr int kChannelBlock = 8;

template <typename scalar_t, int NC>
inline void forward_block(const scalar_t* base, int64_t plane_size,
                          const SampleTaps<acc_t<scalar_t>>* st, int samples, int bins,
                          acc_t<scalar_t> count, scalar_t* out, int64_t out_stride, int nc) {
  using T = acc_t<scalar_t>;
  for (int bin = 0; bin < bins; ++bin) {
    T acc[NC > 0 ? NC : kChannelBlock] = {};
    for (int s = 0; s < samples; ++s, ++st) {
      if (st->pos[0] < 0) continue;
      const int n_ch = NC > 0 ? NC : nc;
      for (int cc = 0; cc < n_ch; ++cc) {
        const scalar_t* plane = base + cc * plane_size;
        acc[cc] += st->w[0] * static_cast<T>(plane[st->pos[0]]) +
                   st->w[1] * static_cast<T>(plane[st->pos[1]]) +
                   st->w[2] * static_cast<T>(plane[st->pos[2]]) +
                   st->w[3] * static_cast<T>(plane[st->pos[3]]);
      }
    }
    const int n_ch = NC > 0 ? NC : nc;
    for (int cc = 0; cc < n_ch; ++cc)
      out[cc * out_stride + bin] = static_cast<scalar_t>(acc[cc] / count);
  }
}

// `inputs[m]` is map m's (N, C, H_m, W_m) data (contiguous).
template <typename scalar_t>
void forward_kernel(const scalar_t* const* inputs, const MapShape<acc_t<scalar_t>>* maps,
                    const AllTaps<acc_t<scalar_t>>& taps, const std::vector<size_t>& offset,
                    const std::vector<SampleTaps<acc_t<scalar_t>>>& table, scalar_t* output,
                    int64_t n_begin, int64_t n_end, int64_t channels, int pooled_height,
                    int pooled_width) {
  const int bins = pooled_height * pooled_width;
  const int64_t num_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  // a block of channels: every RoI's bins, about 4 samples of 4 taps each
  const int64_t block_work = (n_end - n_begin) * kChannelBlock * bins * 16;
  at::parallel_for(0, num_blocks, grain_for(block_work), [&](int64_t b_begin, int64_t b_end) {
    for (int64_t cb = b_begin; cb < b_end; ++cb) {
      const int64_t c0 = cb * kChannelBlock;
      const int nc = static_cast<int>(std::min<int64_t>(kChannelBlock, channels - c0));
      for (int64_t n = n_begin; n < n_end; ++n) {
        const auto& g = taps.geometry[n];
        const int m = taps.map[n];
        const int64_t plane_size = maps[m].height * maps[m].width;
        const scalar_t* base = inputs[m] + (g.batch * channels + c0) * plane_size;
        scalar_t* out = output + (n * channels + c0) * bins;
        const auto* st = table.data() + offset[n - n_begin];
        const int samples = g.grid_h * g.grid_w;
        if (nc == kChannelBlock)
          forward_block<scalar_t, kChannelBlock>(base, plane_size, st, samples, bins, g.count,
                                                 out, bins, nc);
        else
          forward_block<scalar_t, 0>(base, plane_size, st, samples, bins, g.count, out, bins,
                                     nc);
      }
    }
  });
}

// Pools `num_rois` RoIs into `output` (K, C, PH, PW), zero-filled by the caller; RoI n reads map
// `map_of[n]` (or map 0). Batch indices and map indices have been checked.
template <typename scalar_t>
void forward(const scalar_t* const* inputs, const MapShape<acc_t<scalar_t>>* maps,
             const acc_t<scalar_t>* rois, const int64_t* map_of, int64_t num_rois,
             int64_t channels, int pooled_height, int pooled_width, int sampling_ratio,
             bool aligned, scalar_t* output) {
  using T = acc_t<scalar_t>;
  AllTaps<T> taps;
  compute_all_taps(rois, map_of, maps, num_rois, pooled_height, pooled_width, sampling_ratio,
                   aligned, taps);
  // RoIs in chunks whose sample table stays under ~64 MB (large adaptive grids).
  constexpr size_t kTableBudget = (size_t(64) << 20) / sizeof(SampleTaps<T>);
  const size_t bins = static_cast<size_t>(pooled_height * pooled_width);
  std::vector<size_t> offset;
  std::vector<SampleTaps<T>> table;
  for (int64_t n_begin = 0; n_begin < num_rois;) {
    int64_t n_end = n_begin;
    size_t samples = 0;
    do {
      const auto& g = taps.geometry[n_end];
      samples += bins * g.grid_h * g.grid_w;
      ++n_end;
    } while (n_end < num_rois && samples < kTableBudget);
    build_sample_taps(taps, maps, n_begin, n_end, pooled_height, pooled_width, offset, table);
    forward_kernel<scalar_t>(inputs, maps, taps, offset, table, output, n_begin, n_end, channels,
                             pooled_height, pooled_width);
    n_begin = n_end;
  }
}

// Each thread owns a range of channels, so no two threads write the same element of any
// grad_inputs[m] (N, C, H_m, W_m), accumulation type, zero-filled by the caller.
template <typename scalar_t>
void backward(const scalar_t* grad, const MapShape<acc_t<scalar_t>>* maps,
              const acc_t<scalar_t>* rois, const int64_t* map_of, int64_t num_rois,
              int64_t channels, int pooled_height, int pooled_width, int sampling_ratio,
              bool aligned, acc_t<scalar_t>* const* grad_inputs) {
  using T = acc_t<scalar_t>;
  AllTaps<T> taps;
  compute_all_taps(rois, map_of, maps, num_rois, pooled_height, pooled_width, sampling_ratio,
                   aligned, taps);
  // a channel: every RoI's bins, about 4 samples of 4 taps each
  const int64_t channel_work = num_rois * static_cast<int64_t>(pooled_height) * pooled_width * 16;
  at::parallel_for(0, channels, grain_for(channel_work), [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t n = 0; n < num_rois; ++n) {
        const auto& g = taps.geometry[n];
        const int m = taps.map[n];
        const int64_t height = maps[m].height, width = maps[m].width;
        const AxisTap<T>* ytaps = taps.ytaps.data() + taps.y_offset[n];
        const AxisTap<T>* xtaps = taps.xtaps.data() + taps.x_offset[n];
        T* plane = grad_inputs[m] + (g.batch * channels + c) * height * width;
        const scalar_t* gout = grad + (n * channels + c) * pooled_height * pooled_width;
        for (int ph = 0; ph < pooled_height; ++ph) {
          for (int pw = 0; pw < pooled_width; ++pw) {
            const T top = static_cast<T>(gout[ph * pooled_width + pw]);
            for (int iy = 0; iy < g.grid_h; ++iy) {
              const AxisTap<T>& ty = ytaps[ph * g.grid_h + iy];
              if (!ty.valid) continue;
              T* row_low = plane + ty.low * width;
              T* row_high = plane + ty.high * width;
              for (int ix = 0; ix < g.grid_w; ++ix) {
                const AxisTap<T>& tx = xtaps[pw * g.grid_w + ix];
                if (!tx.valid) continue;
                // Caffe2: g_i = top_diff * w_i / count.
                row_low[tx.low] += top * (ty.w_low * tx.w_low) / g.count;
                row_low[tx.high] += top * (ty.w_low * tx.w_high) / g.count;
                row_high[tx.low] += top * (ty.w_high * tx.w_low) / g.count;
                row_high[tx.high] += top * (ty.w_high * tx.w_high) / g.count;
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace roi_align_cpu
}  // namespace pydetectron
