// `box_iou_batched` on the CPU: the B x N x K outputs in parallel (at::parallel_for over the flat
// output index), each one pair's overlap from box_iou_geometry.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "box_iou/box_iou.h"
#include "box_iou/box_iou_geometry.h"
#include "common/common.h"

namespace pydetectron {

at::Tensor box_iou_batched_cpu(const at::Tensor& boxes, const at::Tensor& query_boxes,
                               bool over_first_area) {
  constexpr const char* op = "box_iou_batched";
  const int64_t B = box_iou::check_inputs(boxes, query_boxes, op);
  PYDET_CHECK(boxes.device().is_cpu(), op, ": the CPU kernel got `boxes` on ", boxes.device());
  const int64_t N = boxes.size(1), K = query_boxes.size(1);
  auto output = at::empty({B, N, K}, boxes.options());
  const int64_t total = output.numel();
  if (total == 0) return output;

  const auto boxes_c = boxes.contiguous(), query_c = query_boxes.contiguous();
  // Batch strides in boxes: 0 for a batch of 1 (broadcast).
  const int64_t a_step = boxes.size(0) == 1 ? 0 : N * 4;
  const int64_t q_step = query_boxes.size(0) == 1 ? 0 : K * 4;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "box_iou_batched_cpu", [&] {
    const scalar_t* a = boxes_c.data_ptr<scalar_t>();
    const scalar_t* q = query_c.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, total, grain_for(16), [&](int64_t begin, int64_t end) {
      // Walk (b, n, k) along with the flat index instead of dividing for every element.
      int64_t k = begin % K, n = (begin / K) % N, b = begin / (N * K);
      for (int64_t i = begin; i < end; ++i) {
        out[i] = box_iou::overlap(a + b * a_step + n * 4, q + b * q_step + k * 4,
                                  over_first_area);
        if (++k == K) {
          k = 0;
          if (++n == N) {
            n = 0;
            ++b;
          }
        }
      }
    });
  });
  return output;
}

}  // namespace pydetectron
