// HOST_DEVICE marks the shared arithmetic (Caffe2's rules) that CPU and CUDA kernels both use,
// so that the two back ends cannot drift apart.
#pragma once

#if defined(__CUDACC__)
#define PYDET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDET_HOST_DEVICE inline
#endif

// A host target with fused multiply-add instructions (aarch64, x86 built with -mfma), where g++
// (-ffp-contract=fast by default for C++) may contract a * b + c into one fma.
#if defined(__FP_FAST_FMA) || defined(__FP_FAST_FMAF) || defined(__FMA__) || \
    defined(__aarch64__)
#define PYDET_HOST_HAS_FMA 1
#else
#define PYDET_HOST_HAS_FMA 0
#endif

namespace pydetectron {
// a + b, a - b, a * b, a / b, each rounded to its type on its own, on the host and the device
// alike: a product that is later added to or subtracted from is never contracted into a fused
// multiply-add, so that CUDA results equal the CPU's (and torch's elementwise kernels', which
// round every op) bit for bit where the kernels reproduce a reference's arithmetic (NMS and
// Soft-NMS IoUs, box_iou_batched, polygon_masks_in_boxes). On the device the round-to-nearest
// intrinsics keep nvcc from contracting; on a host with fma the product goes through a
// volatile, which the compiler cannot fuse across; elsewhere there is nothing to contract into.
#if defined(__CUDA_ARCH__)
PYDET_HOST_DEVICE float add_rn(float a, float b) { return __fadd_rn(a, b); }
PYDET_HOST_DEVICE double add_rn(double a, double b) { return __dadd_rn(a, b); }
PYDET_HOST_DEVICE float sub_rn(float a, float b) { return __fsub_rn(a, b); }
PYDET_HOST_DEVICE double sub_rn(double a, double b) { return __dsub_rn(a, b); }
PYDET_HOST_DEVICE float mul_rn(float a, float b) { return __fmul_rn(a, b); }
PYDET_HOST_DEVICE double mul_rn(double a, double b) { return __dmul_rn(a, b); }
PYDET_HOST_DEVICE float div_rn(float a, float b) { return __fdiv_rn(a, b); }
PYDET_HOST_DEVICE double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
PYDET_HOST_DEVICE float add_rn(float a, float b) { return a + b; }
PYDET_HOST_DEVICE double add_rn(double a, double b) { return a + b; }
PYDET_HOST_DEVICE float sub_rn(float a, float b) { return a - b; }
PYDET_HOST_DEVICE double sub_rn(double a, double b) { return a - b; }
template <typename T>
PYDET_HOST_DEVICE T host_mul_rn(T a, T b) {
#if PYDET_HOST_HAS_FMA
  volatile T p = a * b;
  return p;
#else
  return a * b;
#endif
}
PYDET_HOST_DEVICE float mul_rn(float a, float b) { return host_mul_rn(a, b); }
PYDET_HOST_DEVICE double mul_rn(double a, double b) { return host_mul_rn(a, b); }
PYDET_HOST_DEVICE float div_rn(float a, float b) { return a / b; }
PYDET_HOST_DEVICE double div_rn(double a, double b) { return a / b; }
#endif
}  // namespace pydetectron
