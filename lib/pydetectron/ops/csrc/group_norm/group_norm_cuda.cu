// group_norm_fused on CUDA. x is read as (N, HW, C) rows, C contiguous (channels-last), or as
// (N, C, HW) rows, HW contiguous (NCHW):
//   1. partial statistics per (image, chunk, channel). Channels-last: blocks of 32 channels x 8
//      rows, each over a chunk of rows of one image, Welford per thread and Chan's combination
//      across the block. NCHW: one block per (image, channel, chunk of its pixels), combined
//      across the block the same way;
//   2. one block per (image, group) combines its chunks and channels -> mean, rstd, and the
//      per-(image, channel) scale and shift;
//   3. y = fma(x, scale, shift) (+ residual, ReLU'd), one elementwise pass.
// The backward: the same chunked layouts sum dy and dy * x per (image, channel) (dy zeroed where
// the forward's ReLU was), one block per (image, group) forms PyTorch's GroupNorm backward
// coefficients, and dx = dy * rstd * w + x * B + C is one more elementwise pass. Every launch is
// on the current stream; nothing is read back to the host.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "group_norm/group_norm.h"

namespace pydetectron {
namespace {

constexpr int kLanes = 32;     // channels of a statistics block (one warp's row)
constexpr int kRows = 8;       // rows a statistics block reads at once
constexpr int kThreads = 256;  // kLanes * kRows, and the elementwise / finalising blocks
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

template <typename T>
struct Moments {  // Welford's running (count, mean, M2)
  T n, mean, m2;
};

template <typename T>
__device__ __forceinline__ void combine(Moments<T>& a, const Moments<T>& b) {
  if (b.n == T(0)) return;
  if (a.n == T(0)) {
    a = b;
    return;
  }
  const T n = a.n + b.n, delta = b.mean - a.mean, f = b.n / n;
  a.mean += delta * f;
  a.m2 += b.m2 + delta * delta * a.n * f;
  a.n = n;
}

template <typename T>
__device__ __forceinline__ void push(Moments<T>& m, T v) {
  m.n += T(1);
  const T delta = v - m.mean;
  m.mean += delta / m.n;
  m.m2 += delta * (v - m.mean);
}

// Chunks of rows per image: enough blocks to fill the GPU a few times, at least kMinRows rows a
// chunk.
constexpr int64_t kMinRows = 64;
constexpr int64_t kTargetBlocks = 1024;

int64_t chunks_per_image(int64_t N, int64_t HW, int64_t C) {
  const int64_t tiles = ceil_div(C, kLanes) * std::max<int64_t>(N, 1);
  return std::max<int64_t>(1, std::min(ceil_div(HW, kMinRows), ceil_div(kTargetBlocks, tiles)));
}

// grid (ceil(C / 32), S, N): per (image n, chunk s, channel c) the moments of x over the chunk's
// rows.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_moments_kernel(const T* __restrict__ x, int64_t HW, int64_t C, int64_t rows_per_chunk,
                           T* __restrict__ out_mean, T* __restrict__ out_m2,
                           T* __restrict__ out_n) {
  __shared__ Moments<T> shared[kRows][kLanes];
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + tx;
  const int64_t n = blockIdx.z, s = blockIdx.y, S = gridDim.y;
  const int64_t r0 = s * rows_per_chunk, r1 = std::min(HW, r0 + rows_per_chunk);
  Moments<T> m{T(0), T(0), T(0)};
  if (c < C) {
    const T* xn = x + n * HW * C + c;
    for (int64_t r = r0 + ty; r < r1; r += kRows) push(m, xn[r * C]);
  }
  shared[ty][tx] = m;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int k = 1; k < kRows; ++k) combine(m, shared[k][tx]);
    const int64_t i = (n * S + s) * C + c;
    out_mean[i] = m.mean;
    out_m2[i] = m.m2;
    out_n[i] = m.n;
  }
}

// A block's threads combine their moments into thread 0's (warp shuffles, then shared memory).
template <typename T>
__device__ Moments<T> block_combine(Moments<T> m) {
  __shared__ Moments<T> warps[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    Moments<T> o{__shfl_down_sync(0xffffffff, m.n, offset),
                 __shfl_down_sync(0xffffffff, m.mean, offset),
                 __shfl_down_sync(0xffffffff, m.m2, offset)};
    combine(m, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int k = 1; k < kThreads / 32; ++k) combine(m, warps[k]);
  return m;
}

template <typename T>
__device__ T block_sum(T v) {
  __shared__ T warps[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int k = 1; k < kThreads / 32; ++k) v += warps[k];
  return v;
}

// NCHW: chunks of each (image, channel) row of HW pixels, enough blocks to fill the GPU a few
// times, at least kMinPixels pixels a chunk (4 a thread).
constexpr int64_t kMinPixels = 4 * kThreads;

int64_t chunks_per_row(int64_t N, int64_t HW, int64_t C) {
  const int64_t rows = std::max<int64_t>(N * C, 1);
  return std::max<int64_t>(1, std::min(ceil_div(HW, kMinPixels), ceil_div(kTargetBlocks, rows)));
}

// NCHW, grid (C, S, N): the moments of row (n, c)'s chunk s, written where the channels-last
// kernel writes them, (image, chunk, channel).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_moments_nchw_kernel(const T* __restrict__ x, int64_t HW, int64_t pixels_per_chunk,
                                T* __restrict__ out_mean, T* __restrict__ out_m2,
                                T* __restrict__ out_n) {
  const int64_t c = blockIdx.x, C = gridDim.x, s = blockIdx.y, S = gridDim.y, n = blockIdx.z;
  const int64_t r0 = s * pixels_per_chunk, r1 = std::min(HW, r0 + pixels_per_chunk);
  const T* xr = x + (n * C + c) * HW;
  Moments<T> m{T(0), T(0), T(0)};
  for (int64_t r = r0 + threadIdx.x; r < r1; r += kThreads) push(m, xr[r]);
  m = block_combine(m);
  if (threadIdx.x == 0) {
    const int64_t i = (n * S + s) * C + c;
    out_mean[i] = m.mean;
    out_m2[i] = m.m2;
    out_n[i] = m.n;
  }
}

// one block per (image, group): mean, rstd, and scale / shift of the group's D channels
template <typename T>
__global__ void __launch_bounds__(kThreads)
    finalize_moments_kernel(const T* __restrict__ p_mean, const T* __restrict__ p_m2,
                            const T* __restrict__ p_n, const T* __restrict__ weight,
                            const T* __restrict__ bias, int64_t S, int64_t C, int64_t G,
                            double eps, T* __restrict__ mean, T* __restrict__ rstd,
                            T* __restrict__ scale, T* __restrict__ shift) {
  const int64_t ng = blockIdx.x, n = ng / G, g = ng % G, D = C / G;
  Moments<T> m{T(0), T(0), T(0)};
  for (int64_t i = threadIdx.x; i < S * D; i += kThreads) {
    const int64_t j = (n * S + i / D) * C + g * D + i % D;
    combine(m, Moments<T>{p_n[j], p_mean[j], p_m2[j]});
  }
  m = block_combine(m);
  __shared__ T stats[2];
  if (threadIdx.x == 0) {
    const T var = m.n > T(0) ? m.m2 / m.n : T(0);
    stats[0] = m.mean;
    stats[1] = T(1) / sqrt(var + static_cast<T>(eps));
    mean[ng] = stats[0];
    rstd[ng] = stats[1];
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    const int64_t c = g * D + d;
    group_norm::affine(stats[0], stats[1], weight[c], bias[c], scale[n * C + c],
                       shift[n * C + c]);
  }
}

// per (image, channel) scale and shift from given statistics (the backward's ReLU mask)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    affine_kernel(const T* __restrict__ mean, const T* __restrict__ rstd,
                  const T* __restrict__ weight, const T* __restrict__ bias, int64_t NC, int64_t C,
                  int64_t D, T* __restrict__ scale, T* __restrict__ shift) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= NC) return;
  const int64_t n = i / C, c = i % C, ng = n * (C / D) + c / D;
  group_norm::affine(mean[ng], rstd[ng], weight[c], bias[c], scale[i], shift[i]);
}

// The elementwise passes: grid (blocks, N), each thread V consecutive elements of one image at a
// time (V = 4: one 16-byte load per tensor, where the pointers are aligned and a pack never
// straddles what its per-channel values change at: channels-last, C a multiple of 4; NCHW, HW a
// multiple of 4), indices within one image in Index (32 bits where an image's H x W x C fits).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

// The per-channel values of the V elements from e on, of one image's row p of C values:
// channels-last, the V channels e % C ...; NCHW, V copies of channel e / HW's.
template <typename T, int V, bool NHWC, typename Index>
__device__ __forceinline__ Pack<T, V> per_channel(const T* p, Index e, Index C, Index HW) {
  if constexpr (NHWC) {
    return load<T, V>(p + e % C);
  } else {
    const T v = p[e / HW];
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = v;
    return out;
  }
}

template <typename T, int V, bool NHWC, typename Index>
__global__ void __launch_bounds__(kThreads)
    normalize_kernel(const T* __restrict__ x, const T* __restrict__ scale,
                     const T* __restrict__ shift, const T* __restrict__ res, Index HWC, Index C,
                     Index HW, bool relu, T* __restrict__ y) {
  const int64_t n = blockIdx.y;
  const int64_t base = n * static_cast<int64_t>(HWC);
  const T* sc = scale + n * static_cast<int64_t>(C);
  const T* sh = shift + n * static_cast<int64_t>(C);
  const Index packs = HWC / V, step = gridDim.x * kThreads;
  for (Index j = blockIdx.x * kThreads + threadIdx.x; j < packs; j += step) {
    const Index e = j * V;
    const Pack<T, V> xv = load<T, V>(x + base + e),
                     a = per_channel<T, V, NHWC>(sc, e, C, HW),
                     b = per_channel<T, V, NHWC>(sh, e, C, HW);
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = group_norm::normalize(xv.v[k], a.v[k], b.v[k]);
    if (res != nullptr) {
      const Pack<T, V> r = load<T, V>(res + base + e);
#pragma unroll
      for (int k = 0; k < V; ++k) out.v[k] += r.v[k];
    }
    if (relu) {
#pragma unroll
      for (int k = 0; k < V; ++k) out.v[k] = out.v[k] > T(0) ? out.v[k] : T(0);
    }
    *reinterpret_cast<Pack<T, V>*>(y + base + e) = out;
  }
}

// Adds to a and b the sums of g and g * x over the pixels r = begin, begin + step, ... < end of
// one (image, channel) whose values lie `stride` apart (C channels-last, 1 in NCHW); g = dy where
// the forward's ReLU passed (its output recomputed with scale and shift), all of dy without it.
template <typename T>
__device__ __forceinline__ void masked_grad_sums(const T* __restrict__ x,
                                                 const T* __restrict__ dy, int64_t stride,
                                                 int64_t begin, int64_t end, int64_t step,
                                                 bool relu, T sc, T sh, T& a, T& b) {
  for (int64_t r = begin; r < end; r += step) {
    const T v = x[r * stride];
    if (relu && !(group_norm::normalize(v, sc, sh) > T(0))) continue;
    const T g = dy[r * stride];
    a += g;
    b += g * v;
  }
}

// grid (ceil(C / 32), S, N): per (image, chunk, channel) sums of g and g * x, g = dy where the
// ReLU passed
template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                             const T* __restrict__ scale, const T* __restrict__ shift,
                             int64_t HW, int64_t C, int64_t rows_per_chunk, bool relu,
                             T* __restrict__ out_dy, T* __restrict__ out_dyx) {
  __shared__ T shared[2][kRows][kLanes];
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + tx;
  const int64_t n = blockIdx.z, s = blockIdx.y, S = gridDim.y;
  const int64_t r0 = s * rows_per_chunk, r1 = std::min(HW, r0 + rows_per_chunk);
  T a = T(0), b = T(0);
  if (c < C) {
    const T sc = relu ? scale[n * C + c] : T(0), sh = relu ? shift[n * C + c] : T(0);
    masked_grad_sums(x + n * HW * C + c, dy + n * HW * C + c, C, r0 + ty, r1, int64_t{kRows},
                     relu, sc, sh, a, b);
  }
  shared[0][ty][tx] = a;
  shared[1][ty][tx] = b;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int k = 1; k < kRows; ++k) {
      a += shared[0][k][tx];
      b += shared[1][k][tx];
    }
    const int64_t i = (n * S + s) * C + c;
    out_dy[i] = a;
    out_dyx[i] = b;
  }
}

// NCHW, grid (C, S, N): sums of g and g * x over row (n, c)'s chunk s, written where the
// channels-last kernel writes them
template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_grad_sums_nchw_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                  const T* __restrict__ scale, const T* __restrict__ shift,
                                  int64_t HW, int64_t pixels_per_chunk, bool relu,
                                  T* __restrict__ out_dy, T* __restrict__ out_dyx) {
  const int64_t c = blockIdx.x, C = gridDim.x, s = blockIdx.y, S = gridDim.y, n = blockIdx.z;
  const int64_t r0 = s * pixels_per_chunk, r1 = std::min(HW, r0 + pixels_per_chunk);
  const T sc = relu ? scale[n * C + c] : T(0), sh = relu ? shift[n * C + c] : T(0);
  T a = T(0), b = T(0);
  masked_grad_sums(x + (n * C + c) * HW, dy + (n * C + c) * HW, int64_t{1}, r0 + threadIdx.x, r1,
                   int64_t{kThreads}, relu, sc, sh, a, b);
  a = block_sum(a);
  __syncthreads();  // block_sum's shared memory, reused
  b = block_sum(b);
  if (threadIdx.x == 0) {
    const int64_t i = (n * S + s) * C + c;
    out_dy[i] = a;
    out_dyx[i] = b;
  }
}

// one block per (image, group): the per-(image, channel) sums (for dweight / dbias) and the
// group's coefficients of dx = g * rstd * w + x * B + C
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_coefficients_kernel(const T* __restrict__ p_dy, const T* __restrict__ p_dyx,
                             const T* __restrict__ weight, const T* __restrict__ mean,
                             const T* __restrict__ rstd, int64_t S, int64_t HW, int64_t C,
                             int64_t G, T* __restrict__ sum_dy, T* __restrict__ sum_dyx,
                             T* __restrict__ coef_a, T* __restrict__ coef_b,
                             T* __restrict__ coef_c) {
  const int64_t ng = blockIdx.x, n = ng / G, g = ng % G, D = C / G;
  T s = T(0), t = T(0);
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    const int64_t c = g * D + d;
    T a = T(0), b = T(0);
    for (int64_t k = 0; k < S; ++k) {
      a += p_dy[(n * S + k) * C + c];
      b += p_dyx[(n * S + k) * C + c];
    }
    sum_dy[n * C + c] = a;
    sum_dyx[n * C + c] = b;
    t += a * weight[c];
    s += b * weight[c];
  }
  s = block_sum(s);
  __syncthreads();
  t = block_sum(t);
  __shared__ T coefs[2];
  const T mu = mean[ng], rs = rstd[ng];
  if (threadIdx.x == 0) {
    const T count = static_cast<T>(HW * D);
    const T cb = (t * mu - s) * rs * rs * rs / count;
    coefs[0] = cb;
    coefs[1] = -cb * mu - t * rs / count;
  }
  __syncthreads();
  // per (image, channel): dx = g * coef_a + x * coef_b + coef_c
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    const int64_t c = g * D + d;
    coef_a[n * C + c] = rs * weight[c];
    coef_b[n * C + c] = coefs[0];
    coef_c[n * C + c] = coefs[1];
  }
}

// dweight[c] = sum over images of rstd * (sum(dy * x) - mean * sum(dy)); dbias[c] = sum(dy)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    param_grads_kernel(const T* __restrict__ sum_dy, const T* __restrict__ sum_dyx,
                       const T* __restrict__ mean, const T* __restrict__ rstd, int64_t N,
                       int64_t C, int64_t D, T* __restrict__ dweight, T* __restrict__ dbias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t G = C / D, g = c / D;
  T dw = T(0), db = T(0);
  for (int64_t n = 0; n < N; ++n) {
    const T a = sum_dy[n * C + c];
    dw += (sum_dyx[n * C + c] - mean[n * G + g] * a) * rstd[n * G + g];
    db += a;
  }
  dweight[c] = dw;
  dbias[c] = db;
}

template <typename T, int V, bool NHWC, typename Index>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                      const T* __restrict__ scale, const T* __restrict__ shift,
                      const T* __restrict__ coef_a, const T* __restrict__ coef_b,
                      const T* __restrict__ coef_c, Index HWC, Index C, Index HW, bool relu,
                      T* __restrict__ dx) {
  const int64_t n = blockIdx.y;
  const int64_t base = n * static_cast<int64_t>(HWC), nc = n * static_cast<int64_t>(C);
  const Index packs = HWC / V, step = gridDim.x * kThreads;
  for (Index j = blockIdx.x * kThreads + threadIdx.x; j < packs; j += step) {
    const Index e = j * V;
    const Pack<T, V> xv = load<T, V>(x + base + e),
                     a = per_channel<T, V, NHWC>(coef_a + nc, e, C, HW),
                     b = per_channel<T, V, NHWC>(coef_b + nc, e, C, HW),
                     cc = per_channel<T, V, NHWC>(coef_c + nc, e, C, HW);
    Pack<T, V> g = load<T, V>(dy + base + e);
    if (relu) {
      const Pack<T, V> sc = per_channel<T, V, NHWC>(scale + nc, e, C, HW),
                       sh = per_channel<T, V, NHWC>(shift + nc, e, C, HW);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (!(group_norm::normalize(xv.v[k], sc.v[k], sh.v[k]) > T(0))) g.v[k] = T(0);
    }
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = g.v[k] * a.v[k] + xv.v[k] * b.v[k] + cc.v[k];
    *reinterpret_cast<Pack<T, V>*>(dx + base + e) = out;
  }
}

// Launches an elementwise pass with 4-wide packs where `unit` (the run of elements a pack must
// not straddle: C channels-last, HW in NCHW) and every pointer allow it, and 32-bit indices where
// one image's H x W x C fits.
template <typename T, typename Launch>
void elementwise(int64_t N, int64_t HWC, int64_t unit,
                 std::initializer_list<const void*> pointers, Launch launch) {
  bool vec = std::is_same<T, float>::value && unit % 4 == 0;
  for (const void* p : pointers)
    vec = vec && (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0);
  const int64_t packs = vec ? HWC / 4 : HWC;
  // enough blocks in all to fill the GPU several times over; each image its own row of blocks
  const int64_t per_image = std::max<int64_t>(
      1, std::min(ceil_div(packs, kThreads), ceil_div(kMaxBlocks, std::max<int64_t>(N, 1))));
  const dim3 grid(static_cast<unsigned int>(per_image), static_cast<unsigned int>(N));
  const bool narrow = HWC <= std::numeric_limits<int32_t>::max();
  if (vec && narrow) launch(grid, Pack<T, 4>{}, uint32_t{});
  else if (vec) launch(grid, Pack<T, 4>{}, int64_t{});
  else if (narrow) launch(grid, Pack<T, 1>{}, uint32_t{});
  else launch(grid, Pack<T, 1>{}, int64_t{});
}

// Calls f(std::true_type) for a channels-last x, f(std::false_type) for an NCHW one.
template <typename F>
void with_layout(bool nhwc, F f) {
  if (nhwc) f(std::true_type{});
  else f(std::false_type{});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "group_norm_fused";
  group_norm::check_inputs(x, weight, bias, num_groups, op);
  group_norm::check_residual(x, residual, op);
  const bool has_res = residual.has_value() && residual->defined();
  PYDET_CHECK(x.is_cuda(), op, ": the CUDA kernel got `x` on ", x.device());
  PYDET_CHECK(x.size(0) <= 65535, op, ": at most 65535 images a call on CUDA, got ", x.size(0));
  c10::cuda::CUDAGuard device_guard(x.device());
  const bool nhwc = group_norm::channels_last(x);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), G = num_groups;
  auto y = at::empty_like(x, group_norm::layout_of(x));
  auto mean = at::empty({N, G}, x.options());
  auto rstd = at::empty({N, G}, x.options());
  if (N == 0 || C == 0) return {y, mean, rstd};
  const int64_t S = nhwc ? chunks_per_image(N, HW, C) : chunks_per_row(N, HW, C);
  const int64_t per_chunk = ceil_div(HW, S);
  // partial moments (3 x N x S x C), then scale and shift (2 x N x C)
  auto work = at::empty({3 * N * S * C + 2 * N * C}, x.options());
  const auto w = weight.contiguous(), b = bias.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_forward_cuda", [&] {
    scalar_t* p = work.data_ptr<scalar_t>();
    scalar_t *p_mean = p, *p_m2 = p + N * S * C, *p_n = p + 2 * N * S * C;
    scalar_t *scale = p + 3 * N * S * C, *shift = scale + N * C;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    if (nhwc) {
      const dim3 grid(static_cast<unsigned int>(ceil_div(C, kLanes)),
                      static_cast<unsigned int>(S), static_cast<unsigned int>(N));
      partial_moments_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(xp, HW, C, per_chunk,
                                                                       p_mean, p_m2, p_n);
    } else {
      const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(S),
                      static_cast<unsigned int>(N));
      partial_moments_nchw_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(xp, HW, per_chunk,
                                                                           p_mean, p_m2, p_n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_moments_kernel<scalar_t><<<static_cast<unsigned int>(N * G), kThreads, 0, stream>>>(
        p_mean, p_m2, p_n, w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), S, C, G, eps,
        mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), scale, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (HW > 0) {
      const scalar_t* res = has_res ? residual->data_ptr<scalar_t>() : nullptr;
      scalar_t* out = y.data_ptr<scalar_t>();
      with_layout(nhwc, [&](auto layout) {
        constexpr bool kNHWC = decltype(layout)::value;
        elementwise<scalar_t>(N, HW * C, kNHWC ? C : HW, {xp, res, out},
                              [&](dim3 grid, auto pack, auto index) {
          constexpr int V = sizeof(pack) / sizeof(scalar_t);
          using Index = decltype(index);
          normalize_kernel<scalar_t, V, kNHWC, Index><<<grid, kThreads, 0, stream>>>(
              xp, scale, shift, res, static_cast<Index>(HW * C), static_cast<Index>(C),
              static_cast<Index>(HW), relu, out);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    }
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu) {
  constexpr const char* op = "_group_norm_fused_backward";
  const int64_t D =
      group_norm::check_backward_inputs(grad, x, weight, bias, mean, rstd, num_groups, op);
  PYDET_CHECK(x.is_cuda(), op, ": the CUDA kernel got `x` on ", x.device());
  PYDET_CHECK(x.size(0) <= 65535, op, ": at most 65535 images a call on CUDA, got ", x.size(0));
  c10::cuda::CUDAGuard device_guard(x.device());
  const bool nhwc = group_norm::channels_last(x);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), G = num_groups;
  const auto dy = grad.contiguous(group_norm::layout_of(x));
  auto dx = at::empty_like(x, group_norm::layout_of(x));
  if (N == 0 || C == 0) return {dx, at::zeros({C}, x.options()), at::zeros({C}, x.options())};
  const int64_t S = nhwc ? chunks_per_image(N, HW, C) : chunks_per_row(N, HW, C);
  const int64_t per_chunk = ceil_div(HW, S);
  // partial sums (2 x N x S x C), scale / shift (2 x N x C), sums (2 x N x C), coefficients
  // (3 x N x C)
  auto work = at::empty({2 * N * S * C + 7 * N * C}, x.options());
  const auto w = weight.contiguous(), b = bias.contiguous();
  const auto mu = mean.contiguous(), rs = rstd.contiguous();
  auto dweight = at::empty({C}, x.options()), dbias = at::empty({C}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_backward_cuda", [&] {
    scalar_t* p = work.data_ptr<scalar_t>();
    scalar_t *p_dy = p, *p_dyx = p + N * S * C;
    scalar_t *scale = p + 2 * N * S * C, *shift = scale + N * C;
    scalar_t *sum_dy = shift + N * C, *sum_dyx = sum_dy + N * C;
    scalar_t *coef_a = sum_dyx + N * C, *coef_b = coef_a + N * C, *coef_c = coef_b + N * C;
    if (relu) {
      affine_kernel<scalar_t><<<static_cast<unsigned int>(ceil_div(N * C, kThreads)), kThreads,
                                0, stream>>>(mu.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(),
                                             w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                             N * C, C, D, scale, shift);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const scalar_t *dyp = dy.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    if (nhwc) {
      const dim3 grid(static_cast<unsigned int>(ceil_div(C, kLanes)),
                      static_cast<unsigned int>(S), static_cast<unsigned int>(N));
      partial_grad_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          dyp, xp, scale, shift, HW, C, per_chunk, relu, p_dy, p_dyx);
    } else {
      const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(S),
                      static_cast<unsigned int>(N));
      partial_grad_sums_nchw_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          dyp, xp, scale, shift, HW, per_chunk, relu, p_dy, p_dyx);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_coefficients_kernel<scalar_t><<<static_cast<unsigned int>(N * G), kThreads, 0, stream>>>(
        p_dy, p_dyx, w.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(), S,
        HW, C, G, sum_dy, sum_dyx, coef_a, coef_b, coef_c);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    param_grads_kernel<scalar_t><<<static_cast<unsigned int>(ceil_div(C, kThreads)), kThreads, 0,
                                   stream>>>(sum_dy, sum_dyx, mu.data_ptr<scalar_t>(),
                                             rs.data_ptr<scalar_t>(), N, C, D,
                                             dweight.data_ptr<scalar_t>(),
                                             dbias.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (HW > 0) {
      scalar_t* out = dx.data_ptr<scalar_t>();
      with_layout(nhwc, [&](auto layout) {
        constexpr bool kNHWC = decltype(layout)::value;
        // channels-last loads the per-channel rows as packs too: they must be aligned
        elementwise<scalar_t>(N, HW * C, kNHWC ? C : HW,
                              {dyp, xp, out, kNHWC ? scale : nullptr, kNHWC ? coef_a : nullptr},
                              [&](dim3 grid, auto pack, auto index) {
          constexpr int V = sizeof(pack) / sizeof(scalar_t);
          using Index = decltype(index);
          grad_input_kernel<scalar_t, V, kNHWC, Index><<<grid, kThreads, 0, stream>>>(
              dyp, xp, scale, shift, coef_a, coef_b, coef_c, static_cast<Index>(HW * C),
              static_cast<Index>(C), static_cast<Index>(HW), relu, out);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    }
  });
  return {dx, dweight, dbias};
}

}  // namespace pydetectron
