// Schema and kernels of `polygon_masks_in_boxes` (Mask R-CNN's mask targets: an object's polygons
// rasterized inside each box, see polygon_mask.h), added to the `pydetectron` library that
// pydetectron.cpp declares. The fake kernel is in pydetectron/ops/polygon_mask.py.
#include <torch/library.h>

#include "polygon_mask/polygon_mask.h"

TORCH_LIBRARY_FRAGMENT(pydetectron, m) {
  m.def("polygon_masks_in_boxes(Tensor xy, Tensor poly_starts, Tensor poly_lengths, "
        "Tensor group_first, Tensor group_count, Tensor boxes, Tensor group, int resolution) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(pydetectron, CPU, m) {
  m.impl("polygon_masks_in_boxes", &pydetectron::polygon_masks_in_boxes_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pydetectron, CUDA, m) {
  m.impl("polygon_masks_in_boxes", &pydetectron::polygon_masks_in_boxes_cuda);
}
#endif
