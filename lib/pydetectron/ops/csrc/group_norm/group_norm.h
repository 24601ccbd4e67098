// GroupNorm of an (N, C, H, W) map in either layout, optionally with a residual added and a ReLU
// applied in the same pass, with its backward. Registered as `torch.ops.pydetectron.
// group_norm_fused` and `_group_norm_fused_backward` in pydetectron.cpp.
//   x        (N, C, H, W), contiguous (NCHW) or channels-last (x.permute(0, 2, 3, 1)
//            contiguous) in memory; float32 or float64. A map that is both (one channel, or one
//            pixel) is read as NCHW: the two describe the same memory.
//   weight   (C,), bias (C,): the per-channel scale and shift, x's dtype
//   residual optional (N, C, H, W) in x's layout and dtype: added before the ReLU (a residual
//            block's shortcut)
//   output   y (N, C, H, W) in x's layout: (x - mean) * rstd * weight + bias (+ residual),
//            max(., 0) with relu;
//            mean, rstd (N, G) in x's dtype: per (image, group) mean and 1 / sqrt(var + eps),
//            the biased variance over C/G x H x W (what torch.nn.GroupNorm computes)
// The backward takes the forward's inputs and statistics and returns (dx in x's layout, dweight,
// dbias); with relu the gradient passes where the forward's output was > 0, that output
// recomputed from x with the forward's own arithmetic (so the same elements pass). With a residual
// the caller masks the gradient itself (the output, saved, tells where) and passes relu=false.
#pragma once

#include <cmath>
#include <optional>
#include <tuple>

#include "common/common.h"

namespace pydetectron {

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu);
#endif

namespace group_norm {

// Whether x (checked by check_inputs) is read channels-last: laid out so and not also contiguous.
inline bool channels_last(const at::Tensor& x) { return !x.is_contiguous(); }

// x's layout as a memory format (outputs and gradients take it)
inline at::MemoryFormat layout_of(const at::Tensor& x) {
  return channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The checks both devices make; returns the number of groups' channels C / G.
int64_t check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     int64_t num_groups, const char* op);
// residual: undefined, or x's shape, dtype, device and layout
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
