// `paste_masks_in_image` on the CPU: detections in parallel. Arithmetic: paste_mask_geometry.h.
#include <ATen/Parallel.h>

#include <algorithm>

#include "common/common.h"
#include "paste_mask/paste_mask.h"
#include "paste_mask/paste_mask_geometry.h"

namespace pydetectron {

at::Tensor paste_masks_in_image_cpu(const at::Tensor& masks, const at::Tensor& boxes,
                                    int64_t height, int64_t width, double threshold) {
  constexpr const char* op = "paste_masks_in_image";
  paste_mask::check_inputs(masks, boxes, height, width, op);
  PYDET_CHECK(!masks.is_cuda(), op, ": the CPU kernel got `masks` on ", masks.device());
  const int64_t d = masks.size(0);
  const int m = static_cast<int>(masks.size(1));
  auto storage = at::zeros({d, width, height}, masks.options().dtype(at::kBool));
  if (storage.numel() == 0) return storage.transpose(1, 2);
  const auto masks_c = masks.contiguous();
  const auto boxes_c = boxes.contiguous();
  const float* mask_data = masks_c.data_ptr<float>();
  const int64_t* box_data = boxes_c.data_ptr<int64_t>();
  bool* out = storage.data_ptr<bool>();
  const float thresh = static_cast<float>(threshold);
  at::parallel_for(0, d, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* mask = mask_data + i * m * m;
      const int64_t* box = box_data + i * 4;
      // only the box's part of the image can be set
      const int64_t xa = std::max<int64_t>(box[0], 0), ya = std::max<int64_t>(box[1], 0);
      const int64_t xb = std::min<int64_t>(box[2] + 1, width);
      const int64_t yb = std::min<int64_t>(box[3] + 1, height);
      for (int64_t x = xa; x < xb; ++x) {
        bool* column = out + (i * width + x) * height;
        for (int64_t y = ya; y < yb; ++y)
          column[y] = paste_mask::pixel(mask, m, box, y, x, height, width, thresh);
      }
    }
  });
  return storage.transpose(1, 2);
}

}  // namespace pydetectron
