"""Polygon rasterization on the device, pixel-exact with pycocotools (``frPyObjects`` + ``decode``).

Detectron's mask targets rasterize polygons with pycocotools' ``rleFrPoly``. That routine works on
a 5x upsampled grid: vertices are snapped to ``(int)(5 * c + .5)``, every edge is walked
point by point (x-major edges step x by 1 and round y, y-major edges step y by 1 and round x,
both with C's truncating ``(int)(... + .5)``), and each step that crosses an upsampled x boundary
``5k + 2 | 5k + 3`` toggles pixel column k (centre x = k + 0.5) at row
``ceil(clamp((min(v, v') + .5) / 5 - .5, 0, h))``. The mask is the running parity of the toggles
down each column (the RLE).

Here every (polygon edge, pixel column) pair is handled at once: an x-major edge crosses the
boundary of column k iff its x range contains both 5k + 2 and 5k + 3, and the two points there
are known in closed form; a y-major edge's rounded x is monotone along the edge, so it crosses
iff its two end values straddle the boundary, at a step found by division and then confirmed on
the exact double-precision expressions pycocotools evaluates. Toggles are scattered into
(P, h + 1, w) counters and the parity is a cumulative sum down the rows.

With the compiled extension, the mask targets use ``ops.polygon_masks_in_boxes`` instead: the
same arithmetic per (edge, column) in one kernel, with no host synchronisation. This module stays
as the reference that op is tested against bit for bit, and as the fallback without the extension.

Shapes: V vertices in all, P polygons, E = V edges (edge i joins vertex i to the next vertex of
its polygon), h x w the output grid.
"""
import torch

_SCALE = 5.0          # pycocotools' upsampling factor
_WINDOW = 2           # slack around the divided estimate of a y-major crossing step
_CHUNK = 1 << 20      # (edge, column) pairs processed at once, to bound temporary memory


def _c_round(z):
    """C's ``(int)(z + .5)`` on doubles: truncation toward zero, not floor."""
    return torch.trunc(z + 0.5)


def rasterize_polygons(xy, poly_starts, poly_lengths, height, width):
    """Rasterize P polygons given in pixel coordinates of an (height, width) grid.

    xy: (V, 2) float vertices (x, y), the polygons stored one after the other;
    poly_starts, poly_lengths: (P,) int64 first vertex and vertex count of each polygon.
    Returns (P, height, width) bool masks, equal to
    ``pycocotools.mask.decode(frPyObjects([poly], height, width))[:, :, 0]`` for each polygon.
    """
    device = xy.device
    P = poly_starts.numel()
    counts = torch.zeros((P, height + 1, width), dtype=torch.int32, device=device)
    V = xy.shape[0]
    if P == 0 or V == 0 or width == 0:
        return counts[:, :height].bool()

    # Vertices snapped to the upsampled grid, in double precision like pycocotools.
    q = _c_round(_SCALE * xy.to(torch.float64))                               # (V, 2)
    poly_of = torch.repeat_interleave(torch.arange(P, device=device), poly_lengths, output_size=V)
    idx = torch.arange(V, device=device)
    end = (poly_starts + poly_lengths)[poly_of]
    nxt = torch.where(idx + 1 < end, idx + 1, poly_starts[poly_of])
    xs, ys = q[:, 0], q[:, 1]
    xe, ye = q[nxt, 0], q[nxt, 1]
    dx, dy = (xe - xs).abs(), (ye - ys).abs()
    x_major = dx >= dy
    flip = (x_major & (xs > xe)) | (~x_major & (ys > ye))
    # The walk starts at the lower end (in x for x-major, in y for y-major).
    x0 = torch.where(flip, xe, xs)
    y0 = torch.where(flip, ye, ys)
    x1 = torch.where(flip, xs, xe)
    y1 = torch.where(flip, ys, ye)
    # Slope exactly as rleFrPoly computes it (degenerate edges are skipped below).
    s = torch.where(x_major, (y1 - y0) / dx.clamp(min=1), (x1 - x0) / dy.clamp(min=1))
    live = (dx > 0) | (dy > 0)

    cols = torch.arange(width, device=device, dtype=torch.float64)
    chunk = max(1, _CHUNK // width)
    for e0 in range(0, V, chunk):
        sl = slice(e0, min(V, e0 + chunk))
        _toggle_edges(counts, poly_of[sl], x_major[sl], live[sl], x0[sl], y0[sl], x1[sl],
                      s[sl], dy[sl], cols, height)
    parity = torch.cumsum(counts[:, :height], dim=1) % 2
    return parity.bool()


def _toggle_edges(counts, poly_of, x_major, live, x0, y0, x1, s, dy, cols, height):
    """Scatter the column toggles of a chunk of edges into counts (P, h + 1, w)."""
    E, W = x0.shape[0], cols.shape[0]
    lo_u = (_SCALE * cols + 2).unsqueeze(0)                                   # (1, W): 5k + 2
    hi_u = lo_u + 1
    x0_, y0_, x1_, s_ = (t.unsqueeze(1) for t in (x0, y0, x1, s))

    # x-major: u runs over every integer from x0 to x1 (x0 <= x1 after the flip).
    xm = (x_major & live).unsqueeze(1) & (x0_ <= lo_u) & (hi_u <= x1_)
    t = lo_u - x0_                                                            # step at u = 5k+2
    v_a = _c_round(y0_ + s_ * t)
    v_b = _c_round(y0_ + s_ * (t + 1))
    v_xm = torch.minimum(v_a, v_b)

    # y-major: u(t) = (int)(x0 + s t + .5) is monotone in t in [0, dy]; the crossing is where
    # "u >= 5k + 3" changes value, between steps t* and t* + 1; the lower point has v = y0 + t*.
    dy_ = dy.unsqueeze(1)
    u_first = _c_round(x0_)
    u_last = _c_round(x0_ + s_ * dy_)
    ym = (~x_major & live).unsqueeze(1) & ((u_first >= hi_u) != (u_last >= hi_u))
    safe_s = torch.where(s_ == 0, torch.ones_like(s_), s_)
    t_est = torch.floor((lo_u + 0.5 - x0_) / safe_s)
    # The candidate steps t_est - _WINDOW .. t_est + _WINDOW side by side (last axis); the
    # crossing is at the first candidate where "u >= 5k + 3" changes between t and t + 1.
    offsets = torch.arange(-_WINDOW, _WINDOW + 1, device=x0.device, dtype=t_est.dtype)
    tc = torch.minimum((t_est.unsqueeze(-1) + offsets).clamp(min=0),
                       (dy_ - 1).clamp(min=0).unsqueeze(-1))                 # (E, W, D)
    x0e, se, hie = x0_.unsqueeze(-1), s_.unsqueeze(-1), hi_u.unsqueeze(-1)
    hit = ((_c_round(x0e + se * tc) >= hie) != (_c_round(x0e + se * (tc + 1)) >= hie)) \
        & ym.unsqueeze(-1)
    found = hit.any(dim=-1)                                                   # (E, W)
    first = hit.to(torch.uint8).argmax(dim=-1, keepdim=True)                  # first hit
    t_star = torch.where(found, tc.gather(-1, first).squeeze(-1), torch.zeros_like(t_est))
    v_ym = y0_ + t_star

    crossing = xm | (ym & found)
    v = torch.where(xm, v_xm, v_ym)
    row = torch.ceil(((v + 0.5) / _SCALE - 0.5).clamp(min=0, max=height))     # (E, W) in [0, h]
    row = torch.where(crossing, row, torch.zeros_like(row)).long()
    flat = (poly_of.unsqueeze(1) * (height + 1) + row) * W \
        + torch.arange(W, device=cols.device).unsqueeze(0)
    # Every (edge, column) pair adds 0 or 1: no boolean indexing, so no host sync.
    counts.view(-1).scatter_add_(0, flat.flatten(), crossing.flatten().to(torch.int32))
