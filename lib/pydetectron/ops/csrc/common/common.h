// Helpers shared by every pydetectron kernel: argument checks with messages that name the
// argument, and the accumulation type (float for float32/float16/bfloat16, double for float64).
#pragma once

// The tensor class and the few ATen functions the kernels call, not <ATen/ATen.h>: every
// translation unit parses what it includes, and all of ATen costs ~6 s of a ~7 s CPU kernel build.
// The CUDA files include <ATen/ATen.h> through common/cuda_helpers.cuh.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <string>
#include <type_traits>

namespace pydetectron {

// Error messages are assembled with std::string and std::to_string and handed to TORCH_CHECK as
// one string, so no std::ostream is used inside this extension: on a toolchain whose libstdc++
// headers and runtime disagree (seen on the GPU machine) streaming an integer here crashed the
// process instead of raising.
namespace detail {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, double v) { s += std::to_string(v); }
template <typename T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0>
inline void append(std::string& s, T v) { s += std::to_string(v); }
inline void append(std::string& s, c10::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(v[i]);
  }
  s += "]";
}
inline void append(std::string& s, at::ScalarType t) { s += c10::toString(t); }
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }
}  // namespace detail

template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

}  // namespace pydetectron

// TORCH_CHECK with the message built by pydetectron::cat (the message is built only on failure).
#define PYDET_CHECK(cond, ...)                                     \
  do {                                                             \
    if (C10_UNLIKELY(!(cond))) {                                   \
      TORCH_CHECK(false, ::pydetectron::cat(__VA_ARGS__));         \
    }                                                              \
  } while (0)

namespace pydetectron {

// Sums and bilinear weights are computed in `acc_t`: half and bfloat16 inputs accumulate in float32,
// float64 inputs (gradcheck) in float64, float32 inputs in float32 exactly as Caffe2 does.
template <typename scalar_t>
using acc_t = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

// Threads by work size. at::parallel_for(begin, end, grain, f) runs f on the calling thread alone
// when end - begin <= grain. A call whose whole work is below kParallelWork multiply-adds (about
// half a millisecond on one core) stays on one thread: on an idle machine threads gain little
// there, and on a machine shared with other jobs a woken OpenMP thread that is not scheduled makes
// the call wait for it (a 64-channel RoIAlign of 8 RoIs, ~0.4 M multiply-adds: 40 ms median with 2
// threads on a busy 2-core machine; BENCHMARK.md). Work is counted per item by each kernel.
constexpr int64_t kParallelWork = int64_t{1} << 20;

// The grain for items that each cost about `work_per_item` operations.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, work_per_item));
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  PYDET_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              op, ": `", name, "` must be float32, float64, float16 or bfloat16, got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* op, const char* name) {
  PYDET_CHECK(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device(), "; both must be on the same device");
}

// `input` (N, C, H, W) features and `rois` (K, 5) = (batch_index, x1, y1, x2, y2).
inline void check_features_and_rois(const at::Tensor& input, const at::Tensor& rois,
                                    const char* op) {
  PYDET_CHECK(input.dim() == 4, op, ": `input` must be a 4-D (N, C, H, W) tensor, got shape ",
              input.sizes());
  check_floating(input, op, "input");
  check_floating(rois, op, "rois");
  check_same_device(input, "input", rois, op, "rois");
  PYDET_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": `rois` must have shape (K, 5) = (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
}

inline void check_pooled_size(int64_t pooled_height, int64_t pooled_width, const char* op) {
  PYDET_CHECK(pooled_height > 0 && pooled_width > 0, op,
              ": `output_size` must be positive, got (", pooled_height, ", ", pooled_width, ")");
}

// Batch indices are read as floats (Detectron stores them in the rois blob); on the CPU an index
// outside [0, N) is an error. CUDA kernels skip such RoIs (zero output) rather than synchronise.
template <typename T>
inline void check_batch_indices_cpu(const T* rois, int64_t num_rois, int64_t batch_size,
                                    const char* op) {
  for (int64_t n = 0; n < num_rois; ++n) {
    const int64_t b = static_cast<int64_t>(rois[n * 5]);
    PYDET_CHECK(b >= 0 && b < batch_size, op, ": `rois[", n, ", 0]` (batch index) is ", b,
                " but `input` has batch size ", batch_size);
  }
}

// `boxes` (N, 4) = (x1, y1, x2, y2) and `scores` (N,), same floating dtype and device.
inline void check_boxes_and_scores(const at::Tensor& boxes, const at::Tensor& scores,
                                   const char* op) {
  PYDET_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": `boxes` must have shape (N, 4) = (x1, y1, x2, y2), got ", boxes.sizes());
  PYDET_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
              ": `scores` must have shape (N,) with N = boxes.size(0) = ", boxes.size(0),
              ", got ", scores.sizes());
  check_floating(boxes, op, "boxes");
  check_same_device(boxes, "boxes", scores, op, "scores");
  PYDET_CHECK(scores.scalar_type() == boxes.scalar_type(), op, ": `scores` (",
              scores.scalar_type(), ") must have the dtype of `boxes` (", boxes.scalar_type(), ")");
}

// `idxs` (N,) integer ids (classes, images) for batched_nms.
inline void check_idxs(const at::Tensor& boxes, const at::Tensor& idxs, const char* op) {
  PYDET_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
              ": `idxs` must have shape (N,) with N = boxes.size(0) = ", boxes.size(0), ", got ",
              idxs.sizes());
  PYDET_CHECK(!at::isFloatingType(idxs.scalar_type()) && !at::isComplexType(idxs.scalar_type()) &&
                  idxs.scalar_type() != at::kBool,
              op, ": `idxs` must be an integer tensor, got ", idxs.scalar_type());
  check_same_device(boxes, "boxes", idxs, op, "idxs");
}

}  // namespace pydetectron
