// Schema and kernels of `box_iou_batched` (the training targets' batched box IoU / IoA, see
// box_iou.h), added to the `pydetectron` library that pydetectron.cpp declares. The fake kernel
// is in pydetectron/ops/box_iou_batched.py.
#include <torch/library.h>

#include "box_iou/box_iou.h"

TORCH_LIBRARY_FRAGMENT(pydetectron, m) {
  m.def("box_iou_batched(Tensor boxes, Tensor query_boxes, bool over_first_area) -> Tensor");
}

TORCH_LIBRARY_IMPL(pydetectron, CPU, m) {
  m.impl("box_iou_batched", &pydetectron::box_iou_batched_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pydetectron, CUDA, m) {
  m.impl("box_iou_batched", &pydetectron::box_iou_batched_cuda);
}
#endif
