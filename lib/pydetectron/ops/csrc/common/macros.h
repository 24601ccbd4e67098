// HOST_DEVICE marks the shared arithmetic (Caffe2's rules) that CPU and CUDA kernels both use,
// so that the two back ends cannot drift apart.
#pragma once

#if defined(__CUDACC__)
#define PYDET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDET_HOST_DEVICE inline
#endif

#if defined(__CUDACC__)
namespace pydetectron {
// Products that are later added to or subtracted from: rounded on their own (no fused multiply-add
// contraction), so that the CUDA result equals the CPU's bit for bit where Detectron's float32
// arithmetic is reproduced (NMS and Soft-NMS IoUs).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
}  // namespace pydetectron
#endif
