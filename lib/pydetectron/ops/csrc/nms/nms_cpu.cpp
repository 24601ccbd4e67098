// Greedy NMS on the CPU: Detectron's cython_nms.pyx `nms` loop over a stable descending sort.
// batched_nms runs the same loop within each class (boxes of different `idxs` never suppress
// each other) and returns the survivors of all classes in decreasing score order.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/common.h"
#include "nms/nms.h"

namespace pydetectron {
namespace {

template <typename T>
void greedy_nms(const T* b, const T* areas, const int64_t* order, int64_t n, T thresh,
                std::vector<uint8_t>& suppressed) {
  for (int64_t oi = 0; oi < n; ++oi) {
    const int64_t i = order[oi];
    if (suppressed[i]) continue;
    const T ix1 = b[4 * i], iy1 = b[4 * i + 1], ix2 = b[4 * i + 2], iy2 = b[4 * i + 3];
    const T iarea = areas[i];
    for (int64_t oj = oi + 1; oj < n; ++oj) {
      const int64_t j = order[oj];
      if (suppressed[j]) continue;
      const T ovr = iou_plus_one(ix1, iy1, ix2, iy2, iarea, b[4 * j], b[4 * j + 1], b[4 * j + 2],
                                 b[4 * j + 3], areas[j]);
      if (ovr >= thresh) suppressed[j] = 1;  // Detectron suppresses at IoU >= threshold
    }
  }
}

template <typename scalar_t>
at::Tensor nms_kernel(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                      double iou_threshold) {
  using T = acc_t<scalar_t>;
  const int64_t n = boxes.size(0);
  auto boxes_c = boxes.to(acc_dtype(boxes.scalar_type())).contiguous();
  auto scores_c = scores.to(acc_dtype(boxes.scalar_type())).contiguous();
  const T* b = boxes_c.data_ptr<T>();
  const T* s = scores_c.data_ptr<T>();

  // Stable: among equal scores the lower index comes first.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [s](int64_t i, int64_t j) { return s[i] > s[j]; });

  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i)
    areas[i] = (b[4 * i + 2] - b[4 * i] + 1) * (b[4 * i + 3] - b[4 * i + 1] + 1);

  const T thresh = static_cast<T>(iou_threshold);
  std::vector<uint8_t> suppressed(n, 0);
  if (idxs == nullptr) {
    greedy_nms(b, areas.data(), order.data(), n, thresh, suppressed);
  } else {
    // Group by class, keeping the score order inside each class, then NMS each group.
    auto idxs_c = idxs->to(at::kLong).contiguous();
    const int64_t* cls = idxs_c.data_ptr<int64_t>();
    std::vector<int64_t> by_class(order);
    std::stable_sort(by_class.begin(), by_class.end(),
                     [cls](int64_t i, int64_t j) { return cls[i] < cls[j]; });
    for (int64_t start = 0; start < n;) {
      int64_t end = start + 1;
      while (end < n && cls[by_class[end]] == cls[by_class[start]]) ++end;
      greedy_nms(b, areas.data(), by_class.data() + start, end - start, thresh, suppressed);
      start = end;
    }
  }
  std::vector<int64_t> keep;
  keep.reserve(n);
  for (int64_t r = 0; r < n; ++r)
    if (!suppressed[order[r]]) keep.push_back(order[r]);
  auto out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_and_scores(boxes, scores, "nms");
  PYDET_CHECK(boxes.device().is_cpu(), "nms: the CPU kernel got `boxes` on ", boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    keep = nms_kernel<scalar_t>(boxes, scores, nullptr, iou_threshold);
  });
  return keep;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  check_boxes_and_scores(boxes, scores, "batched_nms");
  check_idxs(boxes, idxs, "batched_nms");
  PYDET_CHECK(boxes.device().is_cpu(), "batched_nms: the CPU kernel got `boxes` on ",
              boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "batched_nms_cpu", [&] {
    keep = nms_kernel<scalar_t>(boxes, scores, &idxs, iou_threshold);
  });
  return keep;
}

}  // namespace pydetectron

namespace pydetectron {

at::Tensor batched_nms_mask_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                const at::Tensor& idxs, double iou_threshold) {
  at::Tensor keep = at::zeros({boxes.size(0)}, boxes.options().dtype(at::kBool));
  const at::Tensor kept = batched_nms_cpu(boxes, scores, idxs, iou_threshold);
  keep.index_fill_(0, kept, true);
  return keep;
}

}  // namespace pydetectron
