// `box_iou_batched` on CUDA: one thread per output element (grid-stride loop), one launch on the
// current stream, nothing read back to the host. Arithmetic: box_iou_geometry.h (every product,
// sum and quotient rounded on its own, as torch's elementwise kernels do).
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>

#include "box_iou/box_iou.h"
#include "box_iou/box_iou_geometry.h"
#include "common/common.h"
#include "common/cuda_helpers.cuh"

namespace pydetectron {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any GPU many times over; the grid-stride loop takes the rest.
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    box_iou_batched_kernel(const T* __restrict__ boxes, const T* __restrict__ query_boxes,
                           int64_t total, int64_t N, int64_t K, int64_t a_step, int64_t q_step,
                           bool over_first_area, T* __restrict__ output) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t k = i % K, bn = i / K;
    const int64_t n = bn % N, b = bn / N;
    output[i] = box_iou::overlap(boxes + b * a_step + n * 4, query_boxes + b * q_step + k * 4,
                                 over_first_area);
  }
}

}  // namespace

at::Tensor box_iou_batched_cuda(const at::Tensor& boxes, const at::Tensor& query_boxes,
                                bool over_first_area) {
  constexpr const char* op = "box_iou_batched";
  const int64_t B = box_iou::check_inputs(boxes, query_boxes, op);
  PYDET_CHECK(boxes.is_cuda(), op, ": the CUDA kernel got `boxes` on ", boxes.device());
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t N = boxes.size(1), K = query_boxes.size(1);
  auto output = at::empty({B, N, K}, boxes.options());
  const int64_t total = output.numel();
  if (total == 0) return output;

  const auto boxes_c = boxes.contiguous(), query_c = query_boxes.contiguous();
  const int64_t a_step = boxes.size(0) == 1 ? 0 : N * 4;
  const int64_t q_step = query_boxes.size(0) == 1 ? 0 : K * 4;
  const auto blocks = static_cast<unsigned int>(std::min(ceil_div(total, kThreads), kMaxBlocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "box_iou_batched_cuda", [&] {
    box_iou_batched_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        boxes_c.data_ptr<scalar_t>(), query_c.data_ptr<scalar_t>(), total, N, K, a_step, q_step,
        over_first_area, output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

}  // namespace pydetectron
