// Soft-NMS exactly as Detectron's utils/cython_nms.pyx `soft_nms` (Bodla et al.) runs it:
//   for i in 0..N: swap the highest-scoring remaining box (first position on ties) into position i;
//   decay every later box that overlaps it (+1 widths, IoU computed only when the intersection
//   width and height are > 0): linear: s *= 1 - IoU if IoU > overlap_thresh; gaussian:
//   s *= exp(-IoU^2 / sigma); hard: s = 0 if IoU > overlap_thresh; a box whose score falls below
//   score_thresh is dropped by moving the last remaining box into its place.
//   boxes (N, 4), scores (N,) -> (boxes (M, 4), scores (M,) the decayed scores, keep (M,) int64
//   indices into the input), in the order the boxes were selected.
// Arithmetic is float32 for float32/float16/bfloat16 inputs (bit-exact with Detectron's float32
// Cython) and float64 for float64 inputs.
#pragma once

#include "common/common.h"

#include <tuple>

namespace pydetectron {

enum SoftNMSMethod : int64_t { kSoftNMSHard = 0, kSoftNMSLinear = 1, kSoftNMSGaussian = 2 };

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes,
                                                            const at::Tensor& scores,
                                                            double sigma, double overlap_thresh,
                                                            double score_thresh, int64_t method);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes,
                                                             const at::Tensor& scores,
                                                             double sigma, double overlap_thresh,
                                                             double score_thresh, int64_t method);
#endif

}  // namespace pydetectron
