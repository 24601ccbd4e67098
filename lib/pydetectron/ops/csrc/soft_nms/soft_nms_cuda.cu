// Soft-NMS on CUDA: Detectron's sequential algorithm run by one block of threads.
//
// Each step i: a block-wide arg-max over positions [i, N) (ties: lowest position, as the Cython
// scan `maxscore < score` picks the first maximum) moves the next box to position i; every later
// box is decayed in parallel (the decay only depends on that box and box i). The Cython loop then
// drops boxes below score_thresh by moving the last remaining box into their place; its result is
// reproduced exactly: the survivors already in the front region [i+1, i+K] stay, and its holes
// are filled, in increasing position, by the survivors beyond it taken in decreasing position.
// The IoU arithmetic avoids fused multiply-adds, so the result equals the CPU kernel's bit for bit.
#include <ATen/Dispatch.h>

#include <limits>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "common/macros.h"
#include "soft_nms/soft_nms.h"

namespace pydetectron {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

// Inclusive scan of `v` over the block; `total` gets the block's sum. All threads must call it.
__device__ int block_inclusive_scan(int v, int* warp_sums, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += u;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int s = warp_sums[lane];
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, s, d);
      if (lane >= d) s += u;
    }
    warp_sums[lane] = s;  // inclusive prefix of warp sums
  }
  __syncthreads();
  const int prefix = warp > 0 ? warp_sums[warp - 1] : 0;
  total = warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return v + prefix;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(int n, T* __restrict__ dets, int64_t* __restrict__ inds,
                    int* __restrict__ flags, int* __restrict__ holes, int64_t* __restrict__ count,
                    T sigma, T overlap_thresh, T score_thresh, int method) {
  __shared__ T red_score[kWarps];
  __shared__ int red_pos[kWarps];
  __shared__ int warp_sums[kWarps];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int N = n;

  for (int i = 0; i < N; ++i) {
    // 1. Arg-max of the scores at positions [i, N); the first (lowest) position wins ties.
    T best = -std::numeric_limits<T>::infinity();
    int best_pos = INT_MAX;
    for (int p = i + tid; p < N; p += kThreads) {
      const T s = dets[5 * p + 4];
      if (s > best || (s == best && p < best_pos)) {
        best = s;
        best_pos = p;
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const T s = __shfl_down_sync(0xffffffffu, best, d);
      const int p = __shfl_down_sync(0xffffffffu, best_pos, d);
      if (s > best || (s == best && p < best_pos)) {
        best = s;
        best_pos = p;
      }
    }
    if (lane == 0) {
      red_score[warp] = best;
      red_pos[warp] = best_pos;
    }
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < kWarps; ++w)
        if (red_score[w] > best || (red_score[w] == best && red_pos[w] < best_pos)) {
          best = red_score[w];
          best_pos = red_pos[w];
        }
      if (best_pos == INT_MAX) best_pos = i;  // only NaN scores left: keep position i
      if (best_pos != i) {
        for (int k = 0; k < 5; ++k) {
          const T t = dets[5 * i + k];
          dets[5 * i + k] = dets[5 * best_pos + k];
          dets[5 * best_pos + k] = t;
        }
        const int64_t t = inds[i];
        inds[i] = inds[best_pos];
        inds[best_pos] = t;
      }
    }
    __syncthreads();

    // 2. Decay every later box that overlaps box i; flag the ones that stay (as in the Cython
    //    loop, only a decayed box is compared with score_thresh).
    const T tx1 = dets[5 * i], ty1 = dets[5 * i + 1], tx2 = dets[5 * i + 2], ty2 = dets[5 * i + 3];
    int kept = 0;
    for (int p = i + 1 + tid; p < N; p += kThreads) {
      T* d = dets + 5 * p;
      int keep = 1;
      const T area = (d[2] - d[0] + 1) * (d[3] - d[1] + 1);
      const T iw = (d[2] < tx2 ? d[2] : tx2) - (tx1 < d[0] ? d[0] : tx1) + 1;
      if (iw > 0) {
        const T ih = (d[3] < ty2 ? d[3] : ty2) - (ty1 < d[1] ? d[1] : ty1) + 1;
        if (ih > 0) {
          const T ua = mul_rn(tx2 - tx1 + 1, ty2 - ty1 + 1) + area - mul_rn(iw, ih);
          const T ov = mul_rn(iw, ih) / ua;
          T weight = 1;
          if (method == kSoftNMSLinear) {
            if (ov > overlap_thresh) weight = 1 - ov;
          } else if (method == kSoftNMSGaussian) {
            const T e = -mul_rn(ov, ov) / sigma;
            weight = static_cast<T>(exp(static_cast<double>(e)));
          } else {
            if (ov > overlap_thresh) weight = 0;
          }
          const T s = weight * d[4];
          d[4] = s;
          if (s < score_thresh) keep = 0;
        }
      }
      flags[p] = keep;
      kept += keep;
    }
    int num_kept = 0;
    for (int off = 16; off > 0; off >>= 1) kept += __shfl_down_sync(0xffffffffu, kept, off);
    if (lane == 0) warp_sums[warp] = kept;
    __syncthreads();
    for (int w = 0; w < kWarps; ++w) num_kept += warp_sums[w];
    __syncthreads();

    // 3. Compact as the Cython loop does. Front region: [i+1, front_end); tail: [front_end, N).
    const int front_end = i + 1 + num_kept;
    if (front_end < N) {
      int carry = 0;       // holes counted in earlier chunks
      int carry_tail = 0;  // tail survivors counted in earlier chunks
      for (int base = i + 1; base < N; base += kThreads) {
        const int p = base + tid;
        const bool in = p < N;
        const int f = in ? flags[p] : 0;
        const int is_hole = (in && p < front_end && f == 0) ? 1 : 0;
        const int is_tail_keep = (in && p >= front_end && f == 1) ? 1 : 0;
        int total_h, total_t;
        const int rank_h = block_inclusive_scan(is_hole, warp_sums, total_h) - is_hole + carry;
        const int rank_t =
            block_inclusive_scan(is_tail_keep, warp_sums, total_t) - is_tail_keep + carry_tail;
        if (is_hole) holes[rank_h] = p;
        if (is_tail_keep) flags[p] = 2 + rank_t;  // remember the rank among tail survivors
        carry += total_h;
        carry_tail += total_t;
      }
      __syncthreads();
      const int num_holes = carry;  // == number of tail survivors
      for (int p = front_end + tid; p < N; p += kThreads) {
        const int f = flags[p];
        if (f < 2) continue;
        const int dest = holes[num_holes - 1 - (f - 2)];
        for (int k = 0; k < 5; ++k) dets[5 * dest + k] = dets[5 * p + k];
        inds[dest] = inds[p];
      }
      __syncthreads();
    }
    N = front_end;
  }
  if (tid == 0) *count = N;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes,
                                                             const at::Tensor& scores,
                                                             double sigma, double overlap_thresh,
                                                             double score_thresh, int64_t method) {
  constexpr const char* op = "soft_nms";
  check_boxes_and_scores(boxes, scores, op);
  PYDET_CHECK(boxes.is_cuda(), op, ": the CUDA kernel got `boxes` on ", boxes.device());
  PYDET_CHECK(method >= 0 && method <= 2, op,
              ": `method` must be 0 (hard), 1 (linear) or 2 (gaussian), got ", method);
  PYDET_CHECK(boxes.size(0) < (int64_t(1) << 31), op, ": too many boxes (", boxes.size(0), ")");
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  const auto acc = acc_dtype(boxes.scalar_type());
  auto dets = at::cat({boxes.to(acc), scores.to(acc).unsqueeze(1)}, 1).contiguous();  // (N, 5)
  auto inds = at::arange(n, boxes.options().dtype(at::kLong));
  if (n == 0) {
    return std::make_tuple(boxes.new_empty({0, 4}), scores.new_empty({0}), inds);
  }
  auto flags = at::empty({n}, boxes.options().dtype(at::kInt));
  auto holes = at::empty({n}, boxes.options().dtype(at::kInt));
  auto count = at::empty({1}, boxes.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "soft_nms_cuda", [&] {
    soft_nms_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        static_cast<int>(n), dets.data_ptr<scalar_t>(), inds.data_ptr<int64_t>(),
        flags.data_ptr<int>(), holes.data_ptr<int>(), count.data_ptr<int64_t>(),
        static_cast<scalar_t>(sigma), static_cast<scalar_t>(overlap_thresh),
        static_cast<scalar_t>(score_thresh), static_cast<int>(method));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t m = count.item<int64_t>();  // host sync: the output size
  auto kept = dets.narrow(0, 0, m);
  return std::make_tuple(kept.narrow(1, 0, 4).to(boxes.scalar_type()).contiguous(),
                         kept.select(1, 4).to(boxes.scalar_type()).contiguous(),
                         inds.narrow(0, 0, m).contiguous());
}

}  // namespace pydetectron
