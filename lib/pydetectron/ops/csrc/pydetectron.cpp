// The one binding file: declares the `pydetectron` operator library (schemas) and registers the
// CPU and CUDA kernels of every op. One file, so <torch/library.h> (~3 s to parse) is compiled once. Autograd formulas, fake (meta) kernels for torch.compile and the Python
// signatures live in pydetectron/ops/*.py. Importing `pydetectron._C` runs these registrations.
//
// Autocast: no autocast kernel is registered, so under torch.autocast an op runs in the dtype its
// features arrive in (float16/bfloat16 from an autocast convolution), accumulating in float32;
// `rois` may be float32 alongside float16 features (each kernel reads rois in float32).
#include <Python.h>
#include <torch/library.h>

#include "box_iou/box_iou.h"
#include "group_norm/group_norm.h"
#include "nms/nms.h"
#include "paste_mask/paste_mask.h"
#include "polygon_mask/polygon_mask.h"
#include "rle/rle.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_fpn.h"
#include "roi_pool/roi_pool.h"
#include "soft_nms/soft_nms.h"

// `import pydetectron._C` needs a module init function; the ops register through the static
// initialisers of TORCH_LIBRARY below, so the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(pydetectron, m) {
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int batch_size, int channels, int height, int width, "
        "int sampling_ratio, bool aligned) -> Tensor");
  m.def("roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width) -> (Tensor, Tensor)");
  m.def("_roi_pool_backward(Tensor grad, Tensor argmax, int batch_size, int channels, "
        "int height, int width) -> Tensor");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("batched_nms_mask(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) "
        "-> Tensor");
  m.def("soft_nms(Tensor boxes, Tensor scores, float sigma, float overlap_thresh, "
        "float score_thresh, int method) -> (Tensor, Tensor, Tensor)");
  // RoIAlign over a feature pyramid (roi_align_fpn.h)
  m.def("roi_align_fpn(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
        "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_fpn_backward(Tensor grad, Tensor rois, Tensor levels, "
        "float[] spatial_scales, int pooled_height, int pooled_width, int batch_size, "
        "int channels, int[] heights, int[] widths, int sampling_ratio, bool aligned, "
        "bool channels_last=False) -> Tensor[]");
  // the training targets' batched box IoU / IoA (box_iou.h)
  m.def("box_iou_batched(Tensor boxes, Tensor query_boxes, bool over_first_area) -> Tensor");
  // Mask R-CNN's mask targets: an object's polygons rasterized inside each box (polygon_mask.h)
  m.def("polygon_masks_in_boxes(Tensor xy, Tensor poly_starts, Tensor poly_lengths, "
        "Tensor group_first, Tensor group_count, Tensor boxes, Tensor group, int resolution) "
        "-> Tensor");
  // Detectron's mask pasting into the image, thresholded (paste_mask.h)
  m.def("paste_masks_in_image(Tensor masks, Tensor boxes, int height, int width, "
        "float threshold) -> Tensor");
  // COCO's RLE strings from the change positions of flattened masks (rle.h; CPU only)
  m.def("rle_from_changes(Tensor first, Tensor changes, int height, int width) "
        "-> (Tensor, Tensor)");
  // GroupNorm (+ residual) (+ ReLU) of an NCHW or channels-last map (group_norm.h)
  m.def("group_norm_fused(Tensor x, Tensor weight, Tensor bias, int num_groups, float eps, "
        "bool relu, Tensor? residual=None) -> (Tensor, Tensor, Tensor)");
  m.def("_group_norm_fused_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, "
        "Tensor mean, Tensor rstd, int num_groups, bool relu) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydetectron, CPU, m) {
  m.impl("roi_align", &pydetectron::roi_align_forward_cpu);
  m.impl("_roi_align_backward", &pydetectron::roi_align_backward_cpu);
  m.impl("roi_pool", &pydetectron::roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &pydetectron::roi_pool_backward_cpu);
  m.impl("nms", &pydetectron::nms_cpu);
  m.impl("batched_nms", &pydetectron::batched_nms_cpu);
  m.impl("batched_nms_mask", &pydetectron::batched_nms_mask_cpu);
  m.impl("soft_nms", &pydetectron::soft_nms_cpu);
  m.impl("roi_align_fpn", &pydetectron::roi_align_fpn_forward_cpu);
  m.impl("_roi_align_fpn_backward", &pydetectron::roi_align_fpn_backward_cpu);
  m.impl("box_iou_batched", &pydetectron::box_iou_batched_cpu);
  m.impl("polygon_masks_in_boxes", &pydetectron::polygon_masks_in_boxes_cpu);
  m.impl("paste_masks_in_image", &pydetectron::paste_masks_in_image_cpu);
  m.impl("rle_from_changes", &pydetectron::rle_from_changes_cpu);
  m.impl("group_norm_fused", &pydetectron::group_norm_forward_cpu);
  m.impl("_group_norm_fused_backward", &pydetectron::group_norm_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pydetectron, CUDA, m) {
  m.impl("roi_align", &pydetectron::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &pydetectron::roi_align_backward_cuda);
  m.impl("roi_pool", &pydetectron::roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &pydetectron::roi_pool_backward_cuda);
  m.impl("nms", &pydetectron::nms_cuda);
  m.impl("batched_nms", &pydetectron::batched_nms_cuda);
  m.impl("batched_nms_mask", &pydetectron::batched_nms_mask_cuda);
  m.impl("soft_nms", &pydetectron::soft_nms_cuda);
  m.impl("roi_align_fpn", &pydetectron::roi_align_fpn_forward_cuda);
  m.impl("_roi_align_fpn_backward", &pydetectron::roi_align_fpn_backward_cuda);
  m.impl("box_iou_batched", &pydetectron::box_iou_batched_cuda);
  m.impl("polygon_masks_in_boxes", &pydetectron::polygon_masks_in_boxes_cuda);
  m.impl("paste_masks_in_image", &pydetectron::paste_masks_in_image_cuda);
  m.impl("group_norm_fused", &pydetectron::group_norm_forward_cuda);
  m.impl("_group_norm_fused_backward", &pydetectron::group_norm_backward_cuda);
}
#endif
