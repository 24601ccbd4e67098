// `paste_masks_in_image` on CUDA: one thread per image pixel of each mask (grid-stride loop, the
// pixels in the output's column-major order so that neighbouring threads write neighbouring
// bytes), one launch on the current stream, nothing read back to the host. Arithmetic:
// paste_mask_geometry.h.
#include <algorithm>
#include <cstdint>

#include "common/common.h"
#include "common/cuda_helpers.cuh"
#include "paste_mask/paste_mask.h"
#include "paste_mask/paste_mask_geometry.h"

namespace pydetectron {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

__global__ void __launch_bounds__(kThreads)
    paste_masks_kernel(const float* __restrict__ masks, const int64_t* __restrict__ boxes,
                       int64_t total, int m, int64_t height, int64_t width, float threshold,
                       bool* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t y = i % height, xd = i / height;
    const int64_t x = xd % width, d = xd / width;
    out[i] = paste_mask::pixel(masks + d * m * m, m, boxes + d * 4, y, x, height, width,
                               threshold);
  }
}

}  // namespace

at::Tensor paste_masks_in_image_cuda(const at::Tensor& masks, const at::Tensor& boxes,
                                     int64_t height, int64_t width, double threshold) {
  constexpr const char* op = "paste_masks_in_image";
  paste_mask::check_inputs(masks, boxes, height, width, op);
  PYDET_CHECK(masks.is_cuda(), op, ": the CUDA kernel got `masks` on ", masks.device());
  c10::cuda::CUDAGuard device_guard(masks.device());
  const int64_t d = masks.size(0);
  auto storage = at::empty({d, width, height}, masks.options().dtype(at::kBool));
  const int64_t total = storage.numel();
  if (total == 0) return storage.transpose(1, 2);
  const auto masks_c = masks.contiguous();
  const auto boxes_c = boxes.contiguous();
  const auto blocks = static_cast<unsigned int>(std::min(ceil_div(total, kThreads), kMaxBlocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  paste_masks_kernel<<<blocks, kThreads, 0, stream>>>(
      masks_c.data_ptr<float>(), boxes_c.data_ptr<int64_t>(), total,
      static_cast<int>(masks.size(1)), height, width, static_cast<float>(threshold),
      storage.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return storage.transpose(1, 2);
}

}  // namespace pydetectron
