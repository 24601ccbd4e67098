// COCO's compressed RLE strings of binary masks, from where each column-major flattened mask
// changes value: the host end of the test path's mask encoding (core/mask_results.py finds the
// changes on the device). Registered as `torch.ops.pydetectron.rle_from_changes` in
// pydetectron.cpp; CPU only (its inputs are the few change positions copied to the host).
//   first     (D,) bool          each mask's first pixel
//   changes   (K, 2) int32/int64 rows (mask, p): pixels p and p + 1 of that mask differ,
//                                0 <= p < height * width - 1; sorted by mask, then p
//   height, width                the masks' size
//   output    (chars (S,) uint8, offsets (D + 1,) int64): mask d's string is
//             chars[offsets[d]:offsets[d + 1]], the bytes pycocotools' mask.encode gives as
//             'counts' (its run lengths, zeros first, each after the third taken as the
//             difference with the one two before, written 5 bits a character from the lowest,
//             0x20 flagging that more follow, plus 48)
#pragma once

#include <tuple>

#include "common/common.h"

namespace pydetectron {

std::tuple<at::Tensor, at::Tensor> rle_from_changes_cpu(const at::Tensor& first,
                                                        const at::Tensor& changes,
                                                        int64_t height, int64_t width);

}  // namespace pydetectron
