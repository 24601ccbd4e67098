// Greedy NMS on CUDA with the whole reduction on the GPU.
//
//   1. Sort by score (torch's stable sort, descending: ties keep the lower index first); with
//      classes (batched_nms), then stably by class, so each class is one contiguous run in score
//      order (boxes of different classes never suppress each other, and greedy NMS of one class
//      only needs that class's boxes in score order).
//   2. Mask kernel: for the sorted boxes, bit j of mask[i][j / 64] says "box j (j > i) has
//      IoU >= threshold with box i" (same class for batched_nms), in 64-box column blocks.
//      The mask kernel also marks, per row, which column blocks hold a nonzero word.
//   3. Reduce kernel, a single block: walking the column blocks in order, one warp resolves the
//      64 boxes of block b from their diagonal words (a box is kept when no kept box before it
//      removes it), then all threads OR the nonzero words of the kept boxes' rows into the shared
//      `removed` bit set. Nothing leaves the GPU until the final compaction of the kept flags.
// With classes, steps 2 and 3 work class by class instead (Detectron's test path: 80 classes of
// up to 1000 boxes each, 80,000 boxes in one call): a mask block per 64-row block walks only the
// column blocks up to the end of its last row's class, and the reduction runs one thread block
// per run of one class, all runs at once (a box's suppressors are all of its own class), their
// `removed` bits in one global bit set (runs that share a 64-box word own disjoint bits of it).
#include <ATen/Dispatch.h>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "nms/nms.h"

namespace pydetectron {
namespace {

constexpr int kBlockBits = 64;          // boxes per column block (bits of a mask word)
constexpr int kReduceThreads = 1024;

// Thread t < count copies box `first + t` (x1, y1, x2, y2) and its +1 area into `out[t]`.
template <typename T>
__device__ __forceinline__ void load_boxes(const T* __restrict__ boxes, int64_t first, int count,
                                           T (*out)[5]) {
  if (threadIdx.x < count) {
    const T* b = boxes + (first + threadIdx.x) * 4;
    out[threadIdx.x][0] = b[0];
    out[threadIdx.x][1] = b[1];
    out[threadIdx.x][2] = b[2];
    out[threadIdx.x][3] = b[3];
    out[threadIdx.x][4] = (b[2] - b[0] + 1) * (b[3] - b[1] + 1);
  }
}

template <typename T>
__global__ void nms_mask_kernel(int64_t n, int64_t col_blocks, int64_t summary_words,
                                T threshold, const T* __restrict__ boxes,
                                unsigned long long* __restrict__ mask,
                                unsigned long long* __restrict__ summary) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) return;  // only the upper triangle is ever read
  const int row_size = static_cast<int>(min(n - row_block * kBlockBits, int64_t(kBlockBits)));
  const int col_size = static_cast<int>(min(n - col_block * kBlockBits, int64_t(kBlockBits)));

  __shared__ T col_boxes[kBlockBits][5];  // x1, y1, x2, y2, area
  load_boxes(boxes, col_block * kBlockBits, col_size, col_boxes);
  __syncthreads();
  if (threadIdx.x >= row_size) return;

  const int64_t i = row_block * kBlockBits + threadIdx.x;
  const T* b = boxes + i * 4;
  const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const T area = (x2 - x1 + 1) * (y2 - y1 + 1);
  unsigned long long bits = 0;
  const int start = row_block == col_block ? threadIdx.x + 1 : 0;
  for (int j = start; j < col_size; ++j) {
    const T iou = iou_plus_one(x1, y1, x2, y2, area, col_boxes[j][0], col_boxes[j][1],
                               col_boxes[j][2], col_boxes[j][3], col_boxes[j][4]);
    if (iou >= threshold) bits |= 1ULL << j;  // Detectron suppresses at IoU >= threshold
  }
  mask[i * col_blocks + col_block] = bits;
  // Row summary: which column blocks of row i hold a nonzero word (most do not: a box overlaps
  // few others), so the reduction reads only those.
  if (bits != 0)
    atomicOr(&summary[i * summary_words + col_block / 64], 1ULL << (col_block % 64));
}

__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(int n, int col_blocks, int summary_words,
                      const unsigned long long* __restrict__ mask,
                      const unsigned long long* __restrict__ summary, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed[];  // col_blocks words
  __shared__ unsigned long long diag[kBlockBits];
  __shared__ unsigned long long kept_bits;
  for (int w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;

  const int lane = threadIdx.x & 31;
  // Warp 0 holds the diagonal words of the block it resolves next (loaded one step ahead, while
  // the whole block is busy with the previous step's ORs).
  unsigned long long next_lo = 0, next_hi = 0;
  if (threadIdx.x < 32) {
    next_lo = lane < n ? mask[static_cast<int64_t>(lane) * col_blocks] : 0ULL;
    next_hi = lane + 32 < n ? mask[static_cast<int64_t>(lane + 32) * col_blocks] : 0ULL;
  }
  __syncthreads();

  for (int b = 0; b < col_blocks; ++b) {
    const int row0 = b * kBlockBits;
    const int block_size = min(n - row0, kBlockBits);
    if (threadIdx.x < 32) {
      // Warp 0 resolves block b. Only boxes whose diagonal word is nonzero can remove a box of
      // this block, so lane 0 walks just those, in score order, skipping the removed ones.
      diag[lane] = next_lo;
      diag[lane + 32] = next_hi;
      const unsigned long long nz =
          static_cast<unsigned long long>(__ballot_sync(0xffffffffu, next_lo != 0)) |
          (static_cast<unsigned long long>(__ballot_sync(0xffffffffu, next_hi != 0)) << 32);
      __syncwarp();
      if (lane == 0) {
        const unsigned long long valid =
            block_size == kBlockBits ? ~0ULL : ((1ULL << block_size) - 1ULL);
        unsigned long long rem = removed[b];
        unsigned long long todo = nz & ~rem & valid;
        while (todo != 0) {
          const int r = __ffsll(static_cast<long long>(todo)) - 1;
          rem |= diag[r];  // box r is kept: remove its later neighbours in this block
          const unsigned long long later = r == kBlockBits - 1 ? 0ULL : (~0ULL << (r + 1));
          todo &= ~rem & later;
        }
        kept_bits = ~rem & valid;
      }
      __syncwarp();
      const unsigned long long kept = kept_bits;
      for (int r = lane; r < block_size; r += 32) keep[row0 + r] = (kept >> r) & 1ULL;
    }
    __syncthreads();
    if (threadIdx.x < 32 && b + 1 < col_blocks) {
      const int r0 = row0 + kBlockBits;
      next_lo = r0 + lane < n ? mask[static_cast<int64_t>(r0 + lane) * col_blocks + b + 1] : 0ULL;
      next_hi = r0 + lane + 32 < n
                    ? mask[static_cast<int64_t>(r0 + lane + 32) * col_blocks + b + 1] : 0ULL;
    }
    // OR the rows of the kept boxes into the later words of `removed`, visiting only the words
    // their row summaries mark nonzero. Work item = (row of block b, summary word).
    const unsigned long long kept = kept_bits;
    const int first_q = (b + 1) / 64;
    const int items = kBlockBits * (summary_words - first_q);
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      const int r = it % kBlockBits;
      const int q = first_q + it / kBlockBits;
      if (!((kept >> r) & 1ULL)) continue;
      const int64_t row = row0 + r;
      unsigned long long words = summary[row * summary_words + q];
      if (q == first_q) words &= ~0ULL << ((b + 1) % 64);  // only the blocks after b
      while (words != 0) {
        const int w = q * 64 + __ffsll(static_cast<long long>(words)) - 1;
        words &= words - 1;
        atomicOr(&removed[w], mask[row * col_blocks + w]);
      }
    }
    __syncthreads();
  }
}

// The mask of class-sorted boxes: block r (64 threads, one per row of row block r) fills the
// words of its rows for the column blocks r, r + 1, ..., up to the last one that starts at or
// before the end of the row block's last class (the later ones hold later classes only; their
// words are never read).
template <typename T>
__global__ void nms_mask_classes_kernel(int64_t n, int64_t col_blocks, T threshold,
                                        const T* __restrict__ boxes,
                                        const int64_t* __restrict__ classes,
                                        unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.x;
  const int row_size = static_cast<int>(min(n - row_block * kBlockBits, int64_t(kBlockBits)));
  const int64_t last_class = classes[row_block * kBlockBits + row_size - 1];
  __shared__ T col_boxes[kBlockBits][5];  // x1, y1, x2, y2, area
  __shared__ int64_t col_classes[kBlockBits];
  const bool row = threadIdx.x < row_size;
  const int64_t i = row_block * kBlockBits + (row ? threadIdx.x : 0);
  const T* b = boxes + i * 4;
  const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const T area = (x2 - x1 + 1) * (y2 - y1 + 1);
  const int64_t cls = classes[i];
  for (int64_t col_block = row_block; col_block < col_blocks; ++col_block) {
    if (classes[col_block * kBlockBits] > last_class) break;  // the same for every thread
    const int col_size = static_cast<int>(min(n - col_block * kBlockBits, int64_t(kBlockBits)));
    __syncthreads();  // the previous column block's boxes are read
    load_boxes(boxes, col_block * kBlockBits, col_size, col_boxes);
    if (threadIdx.x < col_size)
      col_classes[threadIdx.x] = classes[col_block * kBlockBits + threadIdx.x];
    __syncthreads();
    if (!row) continue;
    unsigned long long bits = 0;
    const int start = row_block == col_block ? threadIdx.x + 1 : 0;
    for (int j = start; j < col_size; ++j) {
      if (col_classes[j] != cls) continue;
      const T iou = iou_plus_one(x1, y1, x2, y2, area, col_boxes[j][0], col_boxes[j][1],
                                 col_boxes[j][2], col_boxes[j][3], col_boxes[j][4]);
      if (iou >= threshold) bits |= 1ULL << j;  // Detectron suppresses at IoU >= threshold
    }
    mask[i * col_blocks + col_block] = bits;
  }
}

// The reduction of class-sorted boxes: block r resolves every run of one class that starts in
// row block r (usually none or one), walking the run's column blocks in order as
// nms_reduce_kernel does, with `removed` (col_blocks words, zeroed) in global memory shared by
// all runs: a run reads and ORs only its own boxes' bits.
__global__ void __launch_bounds__(256)
    nms_reduce_classes_kernel(int64_t n, int64_t col_blocks, const int64_t* __restrict__ classes,
                              const unsigned long long* __restrict__ mask,
                              unsigned long long* __restrict__ removed, bool* __restrict__ keep) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kBlockBits;
  const int rows = static_cast<int>(min(n - first, int64_t(kBlockBits)));
  __shared__ unsigned long long starts;
  __shared__ int64_t run_end;
  __shared__ unsigned long long diag[kBlockBits];
  __shared__ unsigned long long kept_bits;
  if (threadIdx.x == 0) starts = 0;
  __syncthreads();
  if (threadIdx.x < rows) {
    const int64_t r = first + threadIdx.x;
    if (r == 0 || classes[r] != classes[r - 1]) atomicOr(&starts, 1ULL << threadIdx.x);
  }
  __syncthreads();
  unsigned long long todo_runs = starts;
  while (todo_runs != 0) {
    const int64_t s = first + __ffsll(static_cast<long long>(todo_runs)) - 1;
    todo_runs &= todo_runs - 1;
    if (threadIdx.x == 0) {  // the run's end: the first later class (classes are sorted)
      const int64_t c = classes[s];
      int64_t lo = s + 1, hi = n;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (classes[mid] > c) hi = mid; else lo = mid + 1;
      }
      run_end = lo;
    }
    __syncthreads();
    const int64_t e = run_end;
    const int64_t last_block = (e - 1) / kBlockBits;
    for (int64_t cb = s / kBlockBits; cb <= last_block; ++cb) {
      const int64_t row0 = cb * kBlockBits;
      const int lo = static_cast<int>(max(s, row0) - row0);
      const int hi = static_cast<int>(min(e, row0 + kBlockBits) - row0);
      const unsigned long long valid =
          (hi == kBlockBits ? ~0ULL : ((1ULL << hi) - 1ULL)) & (~0ULL << lo);
      if (threadIdx.x < kBlockBits)
        diag[threadIdx.x] = (valid >> threadIdx.x) & 1ULL
                                ? mask[(row0 + threadIdx.x) * col_blocks + cb] : 0ULL;
      __syncthreads();
      if (threadIdx.x == 0) {
        // (atomicOr with 0: the bits this block ORed in before the last barrier, from L2)
        unsigned long long rem = atomicOr(&removed[cb], 0ULL) & valid;
        unsigned long long kept = 0;
        unsigned long long todo = valid & ~rem;
        while (todo != 0) {
          const int r = __ffsll(static_cast<long long>(todo)) - 1;
          kept |= 1ULL << r;
          rem |= diag[r];  // box r is kept: remove its later neighbours in this block
          const unsigned long long later = r == kBlockBits - 1 ? 0ULL : (~0ULL << (r + 1));
          todo = valid & ~rem & later;
        }
        kept_bits = kept;
      }
      __syncthreads();
      const unsigned long long kept = kept_bits;
      const int t = static_cast<int>(threadIdx.x);
      if (t >= lo && t < hi) keep[row0 + t] = (kept >> t) & 1ULL;
      // OR the kept boxes' words of the run's later column blocks into `removed`
      const int64_t words = last_block - cb;
      for (int64_t it = threadIdx.x; it < kBlockBits * words; it += blockDim.x) {
        const int r = static_cast<int>(it % kBlockBits);
        if (!((kept >> r) & 1ULL)) continue;
        const int64_t w = cb + 1 + it / kBlockBits;
        const unsigned long long m = mask[(row0 + r) * col_blocks + w];
        if (m != 0) atomicOr(&removed[w], m);
      }
      __syncthreads();
    }
  }
}

// Greedy NMS; returns the keep flags of the boxes in `order`'s order (the sort described at the
// top), and `order` itself. No host synchronisation.
std::pair<at::Tensor, at::Tensor> nms_keep_sorted(const at::Tensor& boxes, const at::Tensor& scores,
                                                  const at::Tensor* idxs, double iou_threshold,
                                                  const char* op) {
  const int64_t n = boxes.size(0);
  const auto acc = acc_dtype(boxes.scalar_type());
  // Stable descending sort: equal scores keep their input order (lower index first).
  at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor sorted_classes;
  if (idxs != nullptr) {
    const at::Tensor by_score = idxs->to(at::kLong).index_select(0, order);
    const at::Tensor by_class = std::get<1>(by_score.sort(/*stable=*/true, /*dim=*/0,
                                                          /*descending=*/false));
    order = order.index_select(0, by_class);
    sorted_classes = by_score.index_select(0, by_class).contiguous();
  }
  const at::Tensor sorted_boxes = boxes.to(acc).index_select(0, order).contiguous();

  const int64_t col_blocks = ceil_div(n, kBlockBits);
  PYDET_CHECK(n * col_blocks < (int64_t(1) << 31), op, ": too many boxes (", n, ") for the mask");
  auto mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  auto keep_sorted = at::empty({n}, boxes.options().dtype(at::kBool));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto mask_words = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());

  if (idxs != nullptr) {  // class by class (see the top)
    auto removed = at::zeros({col_blocks}, boxes.options().dtype(at::kLong));
    AT_DISPATCH_FLOATING_TYPES(acc, "batched_nms_cuda", [&] {
      nms_mask_classes_kernel<scalar_t><<<static_cast<unsigned int>(col_blocks), kBlockBits, 0,
                                          stream>>>(
          n, col_blocks, static_cast<scalar_t>(iou_threshold), sorted_boxes.data_ptr<scalar_t>(),
          sorted_classes.data_ptr<int64_t>(), mask_words);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    nms_reduce_classes_kernel<<<static_cast<unsigned int>(col_blocks), 256, 0, stream>>>(
        n, col_blocks, sorted_classes.data_ptr<int64_t>(), mask_words,
        reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
        keep_sorted.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {keep_sorted, order};
  }

  PYDET_CHECK(col_blocks <= 65535, op, ": at most ", 65535 * kBlockBits, " boxes, got ", n);
  const size_t removed_bytes = col_blocks * sizeof(unsigned long long);
  PYDET_CHECK(removed_bytes <= 200 * 1024, op, ": too many boxes for the single-block reduction (",
              n, ")");
  const int64_t summary_words = ceil_div(col_blocks, 64);
  auto summary = at::zeros({n * summary_words}, boxes.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES(acc, "nms_cuda", [&] {
    const dim3 grid(col_blocks, col_blocks);
    nms_mask_kernel<scalar_t><<<grid, kBlockBits, 0, stream>>>(
        n, col_blocks, summary_words, static_cast<scalar_t>(iou_threshold),
        sorted_boxes.data_ptr<scalar_t>(), mask_words,
        reinterpret_cast<unsigned long long*>(summary.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (removed_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(nms_reduce_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(removed_bytes)));
  }
  nms_reduce_kernel<<<1, kReduceThreads, removed_bytes, stream>>>(
      static_cast<int>(n), static_cast<int>(col_blocks), static_cast<int>(summary_words),
      mask_words, reinterpret_cast<const unsigned long long*>(summary.data_ptr<int64_t>()),
      keep_sorted.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep_sorted, order};
}

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                         double iou_threshold, const char* op) {
  PYDET_CHECK(boxes.is_cuda(), op, ": the CUDA kernel got `boxes` on ", boxes.device());
  c10::cuda::CUDAGuard device_guard(boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  auto kept = nms_keep_sorted(boxes, scores, idxs, iou_threshold, op);
  if (idxs == nullptr) {
    // Sorted by score already. The one host synchronisation: the number of kept boxes.
    return kept.second.masked_select(kept.first);
  }
  // Back to one decreasing-score order over all classes (ties: lower index first).
  at::Tensor keep = at::empty_like(kept.first);
  keep.scatter_(0, kept.second, kept.first);
  const at::Tensor by_score =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  return by_score.masked_select(keep.index_select(0, by_score));
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_and_scores(boxes, scores, "nms");
  return nms_cuda_impl(boxes, scores, nullptr, iou_threshold, "nms");
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_boxes_and_scores(boxes, scores, "batched_nms");
  check_idxs(boxes, idxs, "batched_nms");
  return nms_cuda_impl(boxes, scores, &idxs, iou_threshold, "batched_nms");
}

at::Tensor batched_nms_mask_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                 const at::Tensor& idxs, double iou_threshold) {
  check_boxes_and_scores(boxes, scores, "batched_nms_mask");
  check_idxs(boxes, idxs, "batched_nms_mask");
  PYDET_CHECK(boxes.is_cuda(), "batched_nms_mask: the CUDA kernel got `boxes` on ", boxes.device());
  c10::cuda::CUDAGuard device_guard(boxes.device());
  at::Tensor keep = at::zeros({boxes.size(0)}, boxes.options().dtype(at::kBool));
  if (boxes.size(0) == 0) return keep;
  auto kept = nms_keep_sorted(boxes, scores, &idxs, iou_threshold, "batched_nms_mask");
  keep.scatter_(0, kept.second, kept.first);  // no host synchronisation
  return keep;
}

}  // namespace pydetectron
