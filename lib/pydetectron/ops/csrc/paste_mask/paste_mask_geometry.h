// The arithmetic of `paste_masks_in_image`, shared by the CPU and CUDA kernels.
//
// Detectron's segm_results for detection d, pasting box (x0, y0, x1, y1), an (M + 2)^2 source S
// (the soft mask inside a one-cell zero border):
//   w = max(x1 - x0 + 1, 1), h = max(y1 - y0 + 1, 1);
//   the source resized to h x w (cv2.resize, bilinear);
//   image pixels x in [max(x0, 0), min(x1 + 1, W)), y in [max(y0, 0), min(y1 + 1, H)) take the
//   resized pixel (y - y0, x - x0), set when > threshold; every other pixel is 0.
// The bilinear taps follow OpenCV's float32 rule for destination pixel p of a length-n resize:
// scale = 1 / (n / S) and f = float((p + 0.5) * scale - 0.5) in double, left tap floor(f) with
// weight 1 - frac and right tap left + 1 with weight frac = f - floor(f) (float), both taps
// clamped into [0, S - 1] with frac = 0 at either border. The value is the horizontal pass then
// the vertical one, each product and sum rounded on its own (add_rn / mul_rn: no fused
// multiply-add), so the CPU and CUDA kernels agree bit for bit. OpenCV's own resize (its IPP
// path) rounds differently in the last bits: a pixel within a rounding step of the threshold can
// differ from cv2's (measured: 81 of 368 million pixels over 3000 random masks and boxes).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetectron {
namespace paste_mask {

// One destination pixel's two taps along an axis.
struct Taps {
  int left, right;
  float w_left, w_right;
};

PYDET_HOST_DEVICE Taps taps(int64_t p, int64_t n, int src) {
  const double scale = div_rn(1.0, div_rn(static_cast<double>(n), static_cast<double>(src)));
  const float f = static_cast<float>(sub_rn(mul_rn(add_rn(static_cast<double>(p), 0.5), scale),
                                            0.5));
  const float left = floorf(f);
  float frac = sub_rn(f, left);
  int l = static_cast<int>(left);
  if (l < 0) {
    frac = 0.f;
    l = 0;
  } else if (l >= src - 1) {
    frac = 0.f;
    l = src - 1;
  }
  Taps t;
  t.left = l;
  t.right = l + 1 < src - 1 ? l + 1 : src - 1;
  t.w_left = sub_rn(1.f, frac);
  t.w_right = frac;
  return t;
}

// The padded source's pixel (row, col) of an M x M mask: 0 on the one-cell border.
PYDET_HOST_DEVICE float source(const float* mask, int m, int row, int col) {
  return (row >= 1 && row <= m && col >= 1 && col <= m) ? mask[(row - 1) * m + (col - 1)] : 0.f;
}

// Whether image pixel (y, x) is set for a mask and its box (x0, y0, x1, y1).
PYDET_HOST_DEVICE bool pixel(const float* mask, int m, const int64_t* box, int64_t y, int64_t x,
                             int64_t height, int64_t width, float threshold) {
  const int64_t x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
  const int64_t xa = x0 > 0 ? x0 : 0, ya = y0 > 0 ? y0 : 0;
  const int64_t xb = x1 + 1 < width ? x1 + 1 : width, yb = y1 + 1 < height ? y1 + 1 : height;
  if (x < xa || x >= xb || y < ya || y >= yb) return false;
  const int64_t w = x1 - x0 + 1 > 1 ? x1 - x0 + 1 : 1;
  const int64_t h = y1 - y0 + 1 > 1 ? y1 - y0 + 1 : 1;
  const int src = m + 2;
  const Taps tx = taps(x - x0, w, src), ty = taps(y - y0, h, src);
  const float top = add_rn(mul_rn(source(mask, m, ty.left, tx.left), tx.w_left),
                           mul_rn(source(mask, m, ty.left, tx.right), tx.w_right));
  const float bottom = add_rn(mul_rn(source(mask, m, ty.right, tx.left), tx.w_left),
                              mul_rn(source(mask, m, ty.right, tx.right), tx.w_right));
  return add_rn(mul_rn(top, ty.w_left), mul_rn(bottom, ty.w_right)) > threshold;
}

}  // namespace paste_mask
}  // namespace pydetectron
