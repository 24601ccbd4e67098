// HOST_DEVICE marks the shared arithmetic (Caffe2's rules) that CPU and CUDA kernels both use,
// so that the two back ends cannot drift apart.
#pragma once

#if defined(__CUDACC__)
#define PYDET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDET_HOST_DEVICE inline
#endif
