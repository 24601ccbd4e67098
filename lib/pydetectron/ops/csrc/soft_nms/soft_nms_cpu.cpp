// Soft-NMS on the CPU: the sequential algorithm of Detectron's Cython, statement for statement.
#include <ATen/Dispatch.h>

#include <cmath>
#include <vector>

#include "common/common.h"
#include "soft_nms/soft_nms.h"

namespace pydetectron {
namespace {

template <typename T>
void soft_nms_kernel(std::vector<T>& dets, std::vector<int64_t>& inds, int64_t& n_out, T sigma,
                     T overlap_thresh, T score_thresh, int64_t method) {
  // dets: N rows of (x1, y1, x2, y2, score), permuted in place; inds follows the rows.
  int64_t N = n_out;
  auto row = [&](int64_t i) { return dets.data() + 5 * i; };
  for (int64_t i = 0; i < N; ++i) {
    // Bring the highest remaining score to position i (the first one wins ties).
    int64_t maxpos = i;
    T maxscore = row(i)[4];
    for (int64_t pos = i + 1; pos < N; ++pos)
      if (maxscore < row(pos)[4]) {
        maxscore = row(pos)[4];
        maxpos = pos;
      }
    if (maxpos != i) {
      for (int k = 0; k < 5; ++k) std::swap(row(i)[k], row(maxpos)[k]);
      std::swap(inds[i], inds[maxpos]);
    }
    const T tx1 = row(i)[0], ty1 = row(i)[1], tx2 = row(i)[2], ty2 = row(i)[3];
    for (int64_t pos = i + 1; pos < N; ++pos) {
      T* d = row(pos);
      const T area = (d[2] - d[0] + 1) * (d[3] - d[1] + 1);
      const T iw = std::min(tx2, d[2]) - std::max(tx1, d[0]) + 1;
      if (!(iw > 0)) continue;
      const T ih = std::min(ty2, d[3]) - std::max(ty1, d[1]) + 1;
      if (!(ih > 0)) continue;
      const T ua = (tx2 - tx1 + 1) * (ty2 - ty1 + 1) + area - iw * ih;
      const T ov = iw * ih / ua;
      T weight = 1;
      if (method == kSoftNMSLinear) {
        if (ov > overlap_thresh) weight = 1 - ov;
      } else if (method == kSoftNMSGaussian) {
        // Detectron: np.exp of the float32 exponent, evaluated in float64, stored as float32.
        const T e = -(ov * ov) / sigma;
        weight = static_cast<T>(std::exp(static_cast<double>(e)));
      } else {
        if (ov > overlap_thresh) weight = 0;
      }
      d[4] = weight * d[4];
      if (d[4] < score_thresh) {
        // Drop it: the last remaining box takes its place and is examined next.
        for (int k = 0; k < 5; ++k) d[k] = row(N - 1)[k];
        inds[pos] = inds[N - 1];
        --N;
        --pos;
      }
    }
  }
  n_out = N;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes,
                                                            const at::Tensor& scores,
                                                            double sigma, double overlap_thresh,
                                                            double score_thresh, int64_t method) {
  constexpr const char* op = "soft_nms";
  check_boxes_and_scores(boxes, scores, op);
  PYDET_CHECK(boxes.device().is_cpu(), op, ": the CPU kernel got `boxes` on ", boxes.device());
  PYDET_CHECK(method >= 0 && method <= 2, op,
              ": `method` must be 0 (hard), 1 (linear) or 2 (gaussian), got ", method);
  const int64_t n = boxes.size(0);
  const auto acc = acc_dtype(boxes.scalar_type());
  auto dets = at::cat({boxes.to(acc), scores.to(acc).unsqueeze(1)}, 1).contiguous();  // (N, 5)
  at::Tensor out_dets, keep;
  AT_DISPATCH_FLOATING_TYPES(acc, "soft_nms_cpu", [&] {
    using T = scalar_t;
    std::vector<T> d(dets.data_ptr<T>(), dets.data_ptr<T>() + 5 * n);
    std::vector<int64_t> inds(n);
    for (int64_t i = 0; i < n; ++i) inds[i] = i;
    int64_t m = n;
    soft_nms_kernel<T>(d, inds, m, static_cast<T>(sigma), static_cast<T>(overlap_thresh),
                       static_cast<T>(score_thresh), method);
    out_dets = at::empty({m, 5}, dets.options());
    std::copy(d.begin(), d.begin() + 5 * m, out_dets.data_ptr<T>());
    keep = at::empty({m}, boxes.options().dtype(at::kLong));
    std::copy(inds.begin(), inds.begin() + m, keep.data_ptr<int64_t>());
  });
  return std::make_tuple(out_dets.slice(1, 0, 4).to(boxes.scalar_type()).contiguous(),
                         out_dets.select(1, 4).to(boxes.scalar_type()).contiguous(), keep);
}

}  // namespace pydetectron
