// Helpers shared by the CUDA kernels: launch arithmetic and atomics on the accumulation types.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace pydetectron {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Gradients accumulate in float32 (float64 for float64 inputs): the atomics only ever see these.
__device__ __forceinline__ void atomic_add(float* address, float value) { atomicAdd(address, value); }
__device__ __forceinline__ void atomic_add(double* address, double value) { atomicAdd(address, value); }

}  // namespace pydetectron
