// `rle_from_changes` on the CPU (see rle.h): one pass over the masks, in order.
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/common.h"
#include "rle/rle.h"

namespace pydetectron {
namespace {

// Appends one run length of COCO's compressed string (x already differenced).
void put_count(std::vector<uint8_t>& out, int64_t x) {
  bool more = true;
  while (more) {
    int64_t c = x & 0x1f;
    x >>= 5;  // arithmetic shift: a negative difference ends at -1
    more = (c & 0x10) ? x != -1 : x != 0;
    if (more) c |= 0x20;
    out.push_back(static_cast<uint8_t>(c + 48));
  }
}

template <typename I>
void encode(const bool* first, const I* changes, int64_t d, int64_t k, int64_t total,
            std::vector<uint8_t>& chars, int64_t* offsets, const char* op) {
  std::vector<int64_t> counts;
  int64_t row = 0;
  for (int64_t mask = 0; mask < d; ++mask) {
    offsets[mask] = static_cast<int64_t>(chars.size());
    counts.clear();
    int64_t edge = 0;  // where the current run started
    if (first[mask]) counts.push_back(0);  // an empty run of zeros first
    for (; row < k && changes[row * 2] == mask; ++row) {
      const int64_t p = changes[row * 2 + 1];
      PYDET_CHECK(p >= edge && p < total - 1, op, ": change row ", row, " (mask ", mask,
                  ", position ", p, ") is out of order or outside [0, ", total - 1, ")");
      counts.push_back(p + 1 - edge);
      edge = p + 1;
    }
    counts.push_back(total - edge);
    for (size_t i = 0; i < counts.size(); ++i)
      put_count(chars, i > 2 ? counts[i] - counts[i - 2] : counts[i]);
  }
  PYDET_CHECK(row == k, op, ": change row ", row, " names mask ",
              row < k ? static_cast<int64_t>(changes[row * 2]) : 0,
              ", not one of the ", d, " masks in order");
  offsets[d] = static_cast<int64_t>(chars.size());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rle_from_changes_cpu(const at::Tensor& first,
                                                        const at::Tensor& changes,
                                                        int64_t height, int64_t width) {
  constexpr const char* op = "rle_from_changes";
  PYDET_CHECK(first.scalar_type() == at::kBool && first.dim() == 1, op,
              ": `first` must be a (D,) bool tensor, got ", first.scalar_type(), " of shape ",
              first.sizes());
  PYDET_CHECK((changes.scalar_type() == at::kInt || changes.scalar_type() == at::kLong) &&
                  changes.dim() == 2 && changes.size(1) == 2,
              op, ": `changes` must be a (K, 2) int32 or int64 tensor, got ",
              changes.scalar_type(), " of shape ", changes.sizes());
  PYDET_CHECK(!first.is_cuda() && !changes.is_cuda(), op, ": the inputs must be on the CPU");
  PYDET_CHECK(height >= 1 && width >= 1, op, ": `height` and `width` must be >= 1, got ",
              height, " x ", width);
  const int64_t d = first.size(0), k = changes.size(0), total = height * width;
  const auto first_c = first.contiguous();
  const auto changes_c = changes.contiguous();
  auto offsets = at::empty({d + 1}, first.options().dtype(at::kLong));
  std::vector<uint8_t> chars;
  chars.reserve(static_cast<size_t>(k) * 2 + static_cast<size_t>(d) * 4);
  if (changes.scalar_type() == at::kInt) {
    encode(first_c.data_ptr<bool>(), changes_c.data_ptr<int32_t>(), d, k, total, chars,
           offsets.data_ptr<int64_t>(), op);
  } else {
    encode(first_c.data_ptr<bool>(), changes_c.data_ptr<int64_t>(), d, k, total, chars,
           offsets.data_ptr<int64_t>(), op);
  }
  auto out = at::empty({static_cast<int64_t>(chars.size())}, first.options().dtype(at::kByte));
  if (!chars.empty()) std::memcpy(out.data_ptr<uint8_t>(), chars.data(), chars.size());
  return {out, offsets};
}

}  // namespace pydetectron
