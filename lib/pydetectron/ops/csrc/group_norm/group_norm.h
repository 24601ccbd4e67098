// GroupNorm of a channels-last (NHWC) map, optionally followed by a ReLU in the same pass, with
// its backward. Registered as `torch.ops.pydetectron.group_norm_nhwc` and
// `_group_norm_nhwc_backward` in pydetectron.cpp.
//   x        (N, C, H, W), channels-last in memory (x.permute(0, 2, 3, 1) contiguous); float32
//            or float64
//   weight   (C,), bias (C,): the per-channel scale and shift, x's dtype
//   residual optional (N, C, H, W) channels-last, x's dtype: added before the ReLU (a residual
//            block's shortcut)
//   output   y (N, C, H, W) channels-last: (x - mean) * rstd * weight + bias (+ residual),
//            max(., 0) with relu;
//            mean, rstd (N, G) in x's dtype: per (image, group) mean and 1 / sqrt(var + eps),
//            the biased variance over C/G x H x W (what torch.nn.GroupNorm computes)
// The backward takes the forward's inputs and statistics and returns (dx channels-last, dweight,
// dbias); with relu the gradient passes where the forward's output was > 0, that output
// recomputed from x with the forward's own arithmetic (so the same elements pass). With a residual
// the caller masks the gradient itself (the output, saved, tells where) and passes relu=false.
#pragma once

#include <cmath>
#include <optional>
#include <tuple>

#include "common/common.h"

namespace pydetectron {

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_nhwc_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_nhwc_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_nhwc_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_nhwc_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu);
#endif

namespace group_norm {

// The checks both devices make; returns the number of groups' channels C / G.
int64_t check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     int64_t num_groups, const char* op);
// residual: undefined, or x's shape, dtype, device and channels-last layout
void check_residual(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                    const char* op);
// the backward's: check_inputs', the statistics' shapes and `grad`'s; returns C / G
int64_t check_backward_inputs(const at::Tensor& grad, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups,
                              const char* op);

// The per-(image, channel) scale and shift of the normalisation, the one formula of every kernel
// (forward, and the ReLU mask of the backward), so both compute the same bits.
template <typename T>
#ifdef __CUDACC__
__host__ __device__
#endif
inline void affine(T mean, T rstd, T w, T b, T& scale, T& shift) {
  scale = rstd * w;
  shift = b - mean * scale;
}

// One normalised element, fused multiply-add on both devices (the ReLU mask of the backward
// recomputes it and must see the forward's bits).
template <typename T>
#ifdef __CUDACC__
__host__ __device__
#endif
inline T normalize(T x, T scale, T shift) {
#ifdef __CUDA_ARCH__
  return fma(x, scale, shift);
#else
  return std::fma(x, scale, shift);
#endif
}

}  // namespace group_norm
}  // namespace pydetectron
