// `polygon_masks_in_boxes` on the CPU: boxes in parallel (at::parallel_for), each box's object's
// polygons one after the other. A polygon's column toggles go into a (M + 1) x M byte buffer by
// XOR (row M is pycocotools' "past the last row" and is never read), their parity down each
// column is the polygon's mask, OR-ed into the box's output. Arithmetic: polygon_mask_geometry.h.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/common.h"
#include "polygon_mask/polygon_mask.h"
#include "polygon_mask/polygon_mask_geometry.h"

namespace pydetectron {
namespace {

// Every polygon [start, start + length) must lie in the V vertices and every object's polygons
// [first, first + count) in the P polygons: the CPU can say so before reading out of bounds.
void check_ranges(const int64_t* starts, const int64_t* lengths, int64_t num_polys,
                  int64_t num_verts, const int64_t* first, const int64_t* count,
                  int64_t num_groups, const char* op) {
  for (int64_t p = 0; p < num_polys; ++p) {
    PYDET_CHECK(starts[p] >= 0 && lengths[p] >= 0 && lengths[p] <= num_verts - starts[p], op,
                ": polygon ", p, " (`poly_starts[", p, "]` = ", starts[p], ", `poly_lengths[", p,
                "]` = ", lengths[p], ") does not fit in the ", num_verts, " vertices of `xy`");
  }
  for (int64_t q = 0; q < num_groups; ++q) {
    PYDET_CHECK(first[q] >= 0 && count[q] >= 0 && count[q] <= num_polys - first[q], op,
                ": object ", q, " (`group_first[", q, "]` = ", first[q], ", `group_count[", q,
                "]` = ", count[q], ") does not fit in the ", num_polys, " polygons");
  }
}

}  // namespace

at::Tensor polygon_masks_in_boxes_cpu(const at::Tensor& xy, const at::Tensor& poly_starts,
                                      const at::Tensor& poly_lengths,
                                      const at::Tensor& group_first,
                                      const at::Tensor& group_count, const at::Tensor& boxes,
                                      const at::Tensor& group, int64_t resolution) {
  constexpr const char* op = "polygon_masks_in_boxes";
  polygon_mask::check_inputs(xy, poly_starts, poly_lengths, group_first, group_count, boxes,
                             group, resolution, op);
  PYDET_CHECK(boxes.device().is_cpu(), op, ": the CPU kernel got `boxes` on ", boxes.device());
  const int64_t num_boxes = boxes.size(0);
  const int M = static_cast<int>(resolution);
  auto output = at::zeros({num_boxes, resolution, resolution}, boxes.options().dtype(at::kBool));

  const auto xy_c = xy.contiguous();
  const auto starts_c = poly_starts.contiguous(), lengths_c = poly_lengths.contiguous();
  const auto first_c = group_first.contiguous(), count_c = group_count.contiguous();
  const auto boxes_c = boxes.contiguous(), group_c = group.contiguous();
  const int64_t num_verts = xy.size(0), num_polys = poly_starts.size(0);
  const int64_t num_groups = group_first.size(0);
  const int64_t* starts = starts_c.data_ptr<int64_t>();
  const int64_t* lengths = lengths_c.data_ptr<int64_t>();
  const int64_t* first = first_c.data_ptr<int64_t>();
  const int64_t* count = count_c.data_ptr<int64_t>();
  check_ranges(starts, lengths, num_polys, num_verts, first, count, num_groups, op);
  if (num_boxes == 0 || num_polys == 0 || num_verts == 0) return output;

  const float* verts = xy_c.data_ptr<float>();
  const float* box_data = boxes_c.data_ptr<float>();
  const int64_t* groups = group_c.data_ptr<int64_t>();
  bool* out = output.data_ptr<bool>();
  // a box: its M x M cells (and its polygons' edges)
  at::parallel_for(0, num_boxes, grain_for(static_cast<int64_t>(M) * M), [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> toggles(static_cast<size_t>(M + 1) * M);
    std::vector<uint8_t> parity(M);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t q = groups[r];
      if (q < 0 || q >= num_groups) continue;  // no object: the all-zero mask
      const polygon_mask::BoxFrame frame = polygon_mask::box_frame(box_data + 4 * r, M);
      bool* mask = out + r * M * M;
      for (int64_t p = first[q]; p < first[q] + count[q]; ++p) {
        const int64_t length = lengths[p];
        const float* poly = verts + 2 * starts[p];
        std::fill(toggles.begin(), toggles.end(), uint8_t(0));
        for (int64_t i = 0; i < length; ++i) {
          polygon_mask::edge_toggles(poly, length, i, frame, M, [&](int row, int k) {
            toggles[static_cast<size_t>(row) * M + k] ^= 1;
          });
        }
        std::fill(parity.begin(), parity.end(), uint8_t(0));
        for (int y = 0; y < M; ++y) {
          const uint8_t* t_row = toggles.data() + static_cast<size_t>(y) * M;
          bool* m_row = mask + static_cast<int64_t>(y) * M;
          for (int x = 0; x < M; ++x) {
            parity[x] ^= t_row[x];
            m_row[x] = m_row[x] || parity[x];
          }
        }
      }
    }
  });
  return output;
}

}  // namespace pydetectron
