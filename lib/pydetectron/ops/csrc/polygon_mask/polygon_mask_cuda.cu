// `polygon_masks_in_boxes` on CUDA: one block per box, nothing read back to the host (no
// synchronisation), one launch. The block walks its object's polygons one after the other: its
// threads share the polygon's edges and flip the crossed (row, column) bits of a toggle bitset in
// shared memory (atomicXor), then each thread takes columns, turns the column's toggles into the
// polygon's mask (a prefix XOR down the rows, 32 rows per word) and ORs it into the box's result
// bitset, also in shared memory; the result is written to the output once at the end.
// Shared memory per block: M columns x (ceil((M + 1) / 32) + ceil(M / 32)) 32-bit words, about
// 1 KiB at M = 56; a resolution whose two bitsets exceed the 48 KiB a block gets by default
// (M > 438) is refused with an error before the launch.
// A polygon or object whose index range does not fit (which the CPU kernel reports as an error)
// is skipped here: raising would need a synchronisation.
#include <cstdint>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "polygon_mask/polygon_mask.h"
#include "polygon_mask/polygon_mask_geometry.h"

namespace pydetectron {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxSharedBytes = 48 * 1024;

inline int words_for(int bits) { return (bits + 31) / 32; }

__global__ void __launch_bounds__(kThreads)
    polygon_masks_in_boxes_kernel(const float* __restrict__ xy,
                                  const int64_t* __restrict__ starts,
                                  const int64_t* __restrict__ lengths,
                                  const int64_t* __restrict__ group_first,
                                  const int64_t* __restrict__ group_count,
                                  const float* __restrict__ boxes,
                                  const int64_t* __restrict__ group, int64_t num_verts,
                                  int64_t num_polys, int64_t num_groups, int M,
                                  bool* __restrict__ output) {
  extern __shared__ uint32_t smem[];
  // Column-major bitsets: column k's toggle rows 0..M in toggle_words words, its mask rows
  // 0..M-1 in mask_words words (bit y % 32 of word y / 32).
  const int toggle_words = (M + 1 + 31) / 32, mask_words = (M + 31) / 32;
  uint32_t* toggles = smem;
  uint32_t* result = smem + M * toggle_words;
  for (int i = threadIdx.x; i < M * (toggle_words + mask_words); i += blockDim.x) smem[i] = 0;

  const int64_t r = blockIdx.x;
  const int64_t q = group[r];
  int64_t p_begin = 0, p_end = 0;
  if (q >= 0 && q < num_groups) {
    p_begin = group_first[q];
    p_end = p_begin + group_count[q];
    if (p_begin < 0 || p_end < p_begin || p_end > num_polys) p_end = p_begin;  // skipped
  }
  const polygon_mask::BoxFrame frame = polygon_mask::box_frame(boxes + 4 * r, M);
  __syncthreads();

  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t start = starts[p], length = lengths[p];
    if (start >= 0 && length >= 0 && length <= num_verts - start) {  // same for the whole block
      const float* poly = xy + 2 * start;
      for (int64_t i = threadIdx.x; i < length; i += blockDim.x) {
        polygon_mask::edge_toggles(poly, length, i, frame, M, [&](int row, int k) {
          atomicXor(&toggles[k * toggle_words + row / 32], 1u << (row % 32));
        });
      }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < M; k += blockDim.x) {
      uint32_t* col = toggles + k * toggle_words;
      uint32_t carry = 0;  // parity of the toggles above this word: all ones or all zeros
      for (int w = 0; w < mask_words; ++w) {
        uint32_t x = col[w];
        // Prefix XOR: bit i becomes the parity of bits 0..i (rows past M - 1 are never read).
        x ^= x << 1;
        x ^= x << 2;
        x ^= x << 4;
        x ^= x << 8;
        x ^= x << 16;
        x ^= carry;
        carry = (x >> 31) ? 0xffffffffu : 0u;
        result[k * mask_words + w] |= x;
      }
      for (int w = 0; w < toggle_words; ++w) col[w] = 0;  // ready for the next polygon
    }
    __syncthreads();
  }

  bool* out = output + r * M * M;
  for (int idx = threadIdx.x; idx < M * M; idx += blockDim.x) {
    const int y = idx / M, x = idx - y * M;
    out[idx] = (result[x * mask_words + y / 32] >> (y % 32)) & 1u;
  }
}

}  // namespace

at::Tensor polygon_masks_in_boxes_cuda(const at::Tensor& xy, const at::Tensor& poly_starts,
                                       const at::Tensor& poly_lengths,
                                       const at::Tensor& group_first,
                                       const at::Tensor& group_count, const at::Tensor& boxes,
                                       const at::Tensor& group, int64_t resolution) {
  constexpr const char* op = "polygon_masks_in_boxes";
  polygon_mask::check_inputs(xy, poly_starts, poly_lengths, group_first, group_count, boxes,
                             group, resolution, op);
  PYDET_CHECK(boxes.is_cuda(), op, ": the CUDA kernel got `boxes` on ", boxes.device());
  const int M = static_cast<int>(resolution);
  const int64_t shared_bytes =
      int64_t(M) * (words_for(M + 1) + words_for(M)) * static_cast<int64_t>(sizeof(uint32_t));
  PYDET_CHECK(shared_bytes <= kMaxSharedBytes, op, ": `resolution` ", resolution, " needs ",
              shared_bytes, " bytes of shared memory per block in the CUDA kernel, more than ",
              kMaxSharedBytes, "; use resolution <= 438");
  c10::cuda::CUDAGuard device_guard(boxes.device());

  const int64_t num_boxes = boxes.size(0);
  auto output = at::empty({num_boxes, resolution, resolution}, boxes.options().dtype(at::kBool));
  if (num_boxes == 0) return output;
  PYDET_CHECK(num_boxes < (int64_t(1) << 31), op, ": at most 2^31 - 1 boxes (one block each), got ",
              num_boxes);
  const auto xy_c = xy.contiguous();
  const auto starts_c = poly_starts.contiguous(), lengths_c = poly_lengths.contiguous();
  const auto first_c = group_first.contiguous(), count_c = group_count.contiguous();
  const auto boxes_c = boxes.contiguous(), group_c = group.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  polygon_masks_in_boxes_kernel<<<static_cast<unsigned int>(num_boxes), kThreads,
                                  static_cast<size_t>(shared_bytes), stream>>>(
      xy_c.data_ptr<float>(), starts_c.data_ptr<int64_t>(), lengths_c.data_ptr<int64_t>(),
      first_c.data_ptr<int64_t>(), count_c.data_ptr<int64_t>(), boxes_c.data_ptr<float>(),
      group_c.data_ptr<int64_t>(), xy.size(0), poly_starts.size(0), group_first.size(0), M,
      output.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

}  // namespace pydetectron
