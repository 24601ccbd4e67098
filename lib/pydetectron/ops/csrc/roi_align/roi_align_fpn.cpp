// Schemas and kernels of `roi_align_fpn` (RoIAlign over a feature pyramid; see roi_align_fpn.h),
// added to the `pydetectron` library that pydetectron.cpp declares. Autograd and the fake kernels
// are in pydetectron/ops/roi_align_fpn.py.
#include <torch/library.h>

#include "roi_align/roi_align_fpn.h"

TORCH_LIBRARY_FRAGMENT(pydetectron, m) {
  m.def("roi_align_fpn(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
        "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_fpn_backward(Tensor grad, Tensor rois, Tensor levels, "
        "float[] spatial_scales, int pooled_height, int pooled_width, int batch_size, "
        "int channels, int[] heights, int[] widths, int sampling_ratio, bool aligned) "
        "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(pydetectron, CPU, m) {
  m.impl("roi_align_fpn", &pydetectron::roi_align_fpn_forward_cpu);
  m.impl("_roi_align_fpn_backward", &pydetectron::roi_align_fpn_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pydetectron, CUDA, m) {
  m.impl("roi_align_fpn", &pydetectron::roi_align_fpn_forward_cuda);
  m.impl("_roi_align_fpn_backward", &pydetectron::roi_align_fpn_backward_cuda);
}
#endif
