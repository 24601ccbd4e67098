// The arithmetic of `polygon_masks_in_boxes`, shared by the CPU and CUDA kernels so that the two
// cannot drift apart: Detectron's float32 mapping of a polygon into a box's M x M frame, then
// pycocotools' rleFrPoly scan conversion (maskApi.c) in double precision.
//
// rleFrPoly works on a 5x upsampled grid. Vertices are snapped to (int)(5 * c + .5) (C's
// truncation toward zero). Each edge is walked from its lower end (lower x for an "x-major" edge,
// dx >= dy; lower y otherwise) with slope s = (other delta) / (major delta): an x-major edge visits
// u = x0 + t, v = (int)(y0 + s * t + .5) for t = 0..dx, a y-major edge v = y0 + t,
// u = (int)(x0 + s * t + .5) for t = 0..dy. Every step between consecutive points whose u goes
// 5k + 2 <-> 5k + 3 toggles pixel column k (0 <= k < w) at row
// ceil(clamp((min(v, v') + .5) / 5 - .5, 0, h)), a row in [0, h] (row h toggles nothing inside
// the column: the column's crossings are even in number, so the RLE's running parity comes back
// to 0 at its end either way). The mask is the parity of the toggles down each column.
//
// Instead of walking an edge (thousands of upsampled steps for a polygon far outside a small box)
// the kernels visit only the columns an edge crosses, each in closed form:
//   x-major: column k is crossed iff x0 <= 5k + 2 and 5k + 3 <= x1, at steps t = 5k + 2 - x0 and
//            t + 1, whose rounded v are evaluated exactly as rleFrPoly does;
//   y-major: u(t) is monotone in t (every operation on the way is), so column k is crossed iff
//            "u >= 5k + 3" differs between t = 0 and t = dy, and the step where it changes is
//            found by bisection on the exact double expression (no estimate to trust).
// Products that are then added are rounded on their own (mul_rn / add_rn): no fused multiply-add,
// on the GPU (explicit round-to-nearest intrinsics) nor on a host whose compiler would contract.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetectron {
namespace polygon_mask {

constexpr double kScale = 5.0;  // pycocotools' upsampling factor

// add_rn / sub_rn / mul_rn / div_rn (each op rounded on its own): common/macros.h.

// C's (int)(z + .5) on a double, kept as a double: truncation toward zero, not floor.
PYDET_HOST_DEVICE double c_round(double z) { return trunc(add_rn(z, 0.5)); }

// The box r of (x1, y1, x2, y2) in float32 as Detectron's numpy code has it: the frame
// x -> (x - x1) * M / max(x2 - x1, 1), likewise y (that evaluation order, all in float32).
struct BoxFrame {
  float x1, y1, w, h, m;
};

PYDET_HOST_DEVICE float clamp_min_one(float d) { return d < 1.f ? 1.f : d; }  // NaN stays NaN

PYDET_HOST_DEVICE BoxFrame box_frame(const float* box, int resolution) {
  BoxFrame f;
  f.x1 = box[0];
  f.y1 = box[1];
  f.w = clamp_min_one(sub_rn(box[2], box[0]));
  f.h = clamp_min_one(sub_rn(box[3], box[1]));
  f.m = static_cast<float>(resolution);
  return f;
}

// (c - origin) * m / size in float32, then snapped to pycocotools' upsampled grid in double.
PYDET_HOST_DEVICE double snap(float c, float origin, float size, float m) {
  const float mapped = div_rn(mul_rn(sub_rn(c, origin), m), size);
  return c_round(mul_rn(kScale, static_cast<double>(mapped)));
}

// One polygon edge on the upsampled grid, oriented as rleFrPoly walks it.
struct Edge {
  double x0, y0, x1, y1;  // the walk's first and last points (x0 <= x1 or y0 <= y1, see x_major)
  double s;               // slope: d(minor) / d(major)
  double dy;              // |y1 - y0| (the step count of a y-major edge)
  bool x_major;           // dx >= dy
  bool live;              // not a single point
};

PYDET_HOST_DEVICE Edge make_edge(double xs, double ys, double xe, double ye) {
  Edge e;
  const double dx = fabs(xe - xs), dy = fabs(ye - ys);
  e.x_major = dx >= dy;
  const bool flip = (e.x_major && xs > xe) || (!e.x_major && ys > ye);
  e.x0 = flip ? xe : xs;
  e.y0 = flip ? ye : ys;
  e.x1 = flip ? xs : xe;
  e.y1 = flip ? ys : ye;
  e.s = e.x_major ? (e.y1 - e.y0) / (dx < 1. ? 1. : dx) : (e.x1 - e.x0) / (dy < 1. ? 1. : dy);
  e.dy = dy;
  e.live = dx > 0 || dy > 0;
  return e;
}

// The row a crossing at upsampled lower point v toggles: ceil(clamp((v + .5) / 5 - .5, 0, h)).
PYDET_HOST_DEVICE int crossing_row(double v, int height) {
  double yd = add_rn(div_rn(add_rn(v, 0.5), kScale), -0.5);
  if (yd < 0.) {
    yd = 0.;
  } else if (yd > static_cast<double>(height)) {
    yd = static_cast<double>(height);
  }
  return static_cast<int>(ceil(yd));
}

// The upsampled u of step t of a y-major edge: (int)(x0 + s * t + .5).
PYDET_HOST_DEVICE double y_major_u(const Edge& e, double t) {
  return c_round(add_rn(e.x0, mul_rn(e.s, t)));
}

// Columns [*k_begin, *k_end) in [0, width) whose boundary u = 5k + 2 | 5k + 3 the edge crosses
// (x-major: the x range holds both; y-major: the candidates between the end values of u).
// Computed in double and clamped before any integer conversion (coordinates can be huge).
PYDET_HOST_DEVICE void edge_columns(const Edge& e, int width, int* k_begin, int* k_end) {
  double lo, hi;
  if (e.x_major) {
    lo = ceil((e.x0 - 2.) / kScale);          // 5k + 2 >= x0
    hi = floor((e.x1 - 3.) / kScale);         // 5k + 3 <= x1
  } else {
    const double ua = y_major_u(e, 0.);       // the walk's first u (x0, except below 0)
    const double ub = y_major_u(e, e.dy);
    const double umin = ua < ub ? ua : ub, umax = ua < ub ? ub : ua;
    lo = floor((umin - 3.) / kScale) + 1.;    // 5k + 3 > umin
    hi = floor((umax - 3.) / kScale);         // 5k + 3 <= umax
  }
  lo = lo > 0. ? lo : 0.;                     // also maps NaN to 0 ...
  hi = hi < width - 1. ? hi : width - 1.;     // ... and to width - 1: then each column's own
  if (!(lo <= hi)) {                          //     test below decides (and finds nothing)
    *k_begin = *k_end = 0;
    return;
  }
  *k_begin = static_cast<int>(lo);
  *k_end = static_cast<int>(hi) + 1;
}

// The row edge `e` toggles in column k, or -1 when it does not cross that column.
PYDET_HOST_DEVICE int edge_crossing_row(const Edge& e, int k, int height) {
  const double lo_u = add_rn(mul_rn(kScale, k), 2.);  // 5k + 2 (exact)
  const double hi_u = lo_u + 1.;
  if (e.x_major) {
    if (!(e.x0 <= lo_u && hi_u <= e.x1)) return -1;
    const double t = lo_u - e.x0;
    const double va = c_round(add_rn(e.y0, mul_rn(e.s, t)));
    const double vb = c_round(add_rn(e.y0, mul_rn(e.s, t + 1.)));
    return crossing_row(va < vb ? va : vb, height);
  }
  // y-major: "u(t) >= 5k + 3" is monotone in t; find the last t before it changes.
  const bool first = y_major_u(e, 0.) >= hi_u;
  if ((y_major_u(e, e.dy) >= hi_u) == first) return -1;
  double a = 0., b = e.dy;                    // pred(a) == first != pred(b)
  for (int it = 0; it < 64 && b - a > 1.; ++it) {
    const double mid = floor((a + b) * 0.5);
    if ((y_major_u(e, mid) >= hi_u) == first) {
      a = mid;
    } else {
      b = mid;
    }
  }
  return crossing_row(add_rn(e.y0, a), height);  // the lower point of the step: v = y0 + t
}

// Calls toggle(row, k) for every column k that edge i of a polygon crosses (vertex i to vertex
// i + 1, the last one back to the first) once mapped into frame f; `poly` points at the
// polygon's first (x, y) vertex, `length` vertices.
template <typename Toggle>
PYDET_HOST_DEVICE void edge_toggles(const float* poly, int64_t length, int64_t i,
                                    const BoxFrame& f, int resolution, Toggle&& toggle) {
  const int64_t j = i + 1 < length ? i + 1 : 0;
  const Edge e =
      make_edge(snap(poly[2 * i], f.x1, f.w, f.m), snap(poly[2 * i + 1], f.y1, f.h, f.m),
                snap(poly[2 * j], f.x1, f.w, f.m), snap(poly[2 * j + 1], f.y1, f.h, f.m));
  if (!e.live) return;
  int k_begin, k_end;
  edge_columns(e, resolution, &k_begin, &k_end);
  for (int k = k_begin; k < k_end; ++k) {
    const int row = edge_crossing_row(e, k, resolution);
    if (row >= 0) toggle(row, k);
  }
}

}  // namespace polygon_mask
}  // namespace pydetectron
