"""Segmentation masks in the COCO formats: flip, scale, crop, rasterize, and mask post-processing.

Vocabulary (Detectron's):
    mask     a binary (H, W) array
    segm     one object's segmentation in one of COCO's two formats:
    polygon  a list of polygons, each a flat list/array [x0, y0, x1, y1, ...] in image pixels
    RLE      a dict {'size': [H, W], 'counts': ...}; 'counts' is a list of run lengths
             ("uncompressed", COCO's crowd annotations) or a compressed str/bytes string

Geometric conventions follow Detectron: a horizontal flip maps x to ``width - x - 1`` (pixel
indices, like the ``+1`` box convention), and scaling multiplies coordinates by ``im_scale``.
RLE masks are transformed by decoding, transforming the pixels and re-encoding (compressed).
"""
import numpy as np
import cv2
import pycocotools.mask as mask_util


def is_poly(segm):
    """True for the polygon format (a list of polygons), False for an RLE dict."""
    if isinstance(segm, (list, tuple)):
        return True
    if isinstance(segm, dict) and 'counts' in segm:
        return False
    raise TypeError('segm must be a list of polygons or an RLE dict, got %s' % type(segm).__name__)


def rle_from_segm(segm, height, width):
    """Any RLE form (uncompressed list counts, str or bytes counts) -> a pycocotools RLE dict."""
    if isinstance(segm['counts'], list):
        # COCO's uncompressed crowd RLE: pycocotools compresses it through frPyObjects
        return mask_util.frPyObjects(segm, height, width)
    if isinstance(segm['counts'], str):
        return {'size': list(segm['size']), 'counts': segm['counts'].encode('ascii')}
    return segm


def mask_to_rle(mask):
    """(H, W) binary mask -> compressed RLE dict."""
    return mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))


def segm_to_mask(segm, height, width):
    """One segm (polygons or RLE) -> (height, width) uint8 mask."""
    if is_poly(segm):
        if len(segm) == 0:
            return np.zeros((height, width), dtype=np.uint8)
        rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in segm], height, width)
        return (mask_util.decode(rles).sum(axis=2) > 0).astype(np.uint8)
    return mask_util.decode(rle_from_segm(segm, height, width))


def polygon_area(poly):
    """Signed-area magnitude of one flat polygon [x0, y0, x1, y1, ...] (shoelace formula)."""
    p = np.asarray(poly, dtype=np.float64)
    x, y = p[0::2], p[1::2]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def is_valid_polygon(poly):
    """A usable polygon has >= 3 points (>= 6 coordinates, an even count) and non-zero area."""
    return len(poly) >= 6 and len(poly) % 2 == 0 and polygon_area(poly) > 0


def flip_segms(segms, height, width):
    """Left/right flip each segm of a list; polygons stay polygons, RLEs come back compressed."""
    flipped = []
    for segm in segms:
        if is_poly(segm):
            out = []
            for poly in segm:
                p = np.array(poly, dtype=np.float64)
                p[0::2] = width - p[0::2] - 1
                out.append(p.tolist())
            flipped.append(out)
        else:
            mask = mask_util.decode(rle_from_segm(segm, height, width))
            flipped.append(mask_to_rle(mask[:, ::-1]))
    return flipped


def scale_segms(segms, im_scale, height, width):
    """Scale segms from an (height, width) image by ``im_scale``.

    Polygons become float32 arrays multiplied by ``im_scale`` (Detectron scales every coordinate
    of the roidb by the same factor). RLE masks are resized with nearest-neighbour interpolation to
    the scaled image size (round(height * s), round(width * s)), the size ``prep_im_for_blob``
    gives the image.
    """
    out = []
    scaled_h = int(np.round(height * im_scale))
    scaled_w = int(np.round(width * im_scale))
    for segm in segms:
        if is_poly(segm):
            out.append([np.asarray(p, dtype=np.float32) * np.float32(im_scale) for p in segm])
        else:
            mask = mask_util.decode(rle_from_segm(segm, height, width))
            mask = cv2.resize(mask, (scaled_w, scaled_h), interpolation=cv2.INTER_NEAREST)
            out.append(mask_to_rle(mask))
    return out


def _clip_polygon_to_rect(poly, x_lo, y_lo, x_hi, y_hi):
    """Sutherland-Hodgman clip of one flat polygon to the box [x_lo, x_hi] x [y_lo, y_hi].

    The clip region is convex, so the result is one polygon (for a concave subject it may contain
    zero-width edges along the border, which rasterize to nothing). Returns a flat float array,
    possibly empty.
    """
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    # Each clip edge: (axis, bound, keep points with coordinate >= bound when sign=+1, <= when -1)
    for axis, bound, sign in ((0, x_lo, 1), (0, x_hi, -1), (1, y_lo, 1), (1, y_hi, -1)):
        if len(pts) == 0:
            break
        inside = sign * (pts[:, axis] - bound) >= 0
        out = []
        n = len(pts)
        for i in range(n):
            cur, prev = pts[i], pts[i - 1]
            cur_in, prev_in = inside[i], inside[i - 1]
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cur_in:
                out.append(cur)
        pts = np.asarray(out, dtype=np.float64).reshape(-1, 2)
    # intersections computed in floating point may stray by an ulp outside the box
    np.clip(pts[:, 0], x_lo, x_hi, out=pts[:, 0])
    np.clip(pts[:, 1], y_lo, y_hi, out=pts[:, 1])
    return pts.reshape(-1)


def crop_segms(segms, x0, y0, crop_w, crop_h, height, width):
    """Crop segms of an (height, width) image to the window of pixels
    [x0, x0 + crop_w) x [y0, y0 + crop_h), in the window's coordinates.

    Polygons are translated and clipped to the window (continuous extent [0, crop_w] x
    [0, crop_h]), so that rasterizing them at (crop_h, crop_w) reproduces the crop of the original
    mask; polygons left without area are dropped, so an object outside the window gets ``[]``.
    RLE masks are decoded, cropped and re-encoded.
    """
    out = []
    for segm in segms:
        if is_poly(segm):
            clipped = []
            for poly in segm:
                p = np.asarray(poly, dtype=np.float64).copy()
                p[0::2] -= x0
                p[1::2] -= y0
                c = _clip_polygon_to_rect(p, 0., 0., float(crop_w), float(crop_h))
                if is_valid_polygon(c):
                    clipped.append(c.tolist())
            out.append(clipped)
        else:
            mask = mask_util.decode(rle_from_segm(segm, height, width))
            out.append(mask_to_rle(mask[y0:y0 + crop_h, x0:x0 + crop_w]))
    return out


def polys_to_mask(polygons, height, width):
    """Polygons of one object -> (height, width) float32 binary mask."""
    return segm_to_mask(polygons, height, width).astype(np.float32)


def mask_to_bbox(mask):
    """Tight inclusive box (x1, y1, x2, y2) of a binary mask as float32, or None if empty."""
    xs = np.where(mask.any(axis=0))[0]
    ys = np.where(mask.any(axis=1))[0]
    if len(xs) == 0:
        return None
    return np.array((xs[0], ys[0], xs[-1], ys[-1]), dtype=np.float32)


def polys_to_mask_wrt_box(polygons, box, M):
    """Rasterize one object's polygons inside ``box`` onto an M x M float32 grid.

    Detectron's mask-target rasterization: the box maps to [0, M] with box sides
    ``x2 - x1`` (no ``+1``), floored at 1 pixel.
    """
    w = max(box[2] - box[0], 1)
    h = max(box[3] - box[1], 1)
    norm = []
    for poly in polygons:
        p = np.array(poly, dtype=np.float64)
        p[0::2] = (p[0::2] - box[0]) * M / w
        p[1::2] = (p[1::2] - box[1]) * M / h
        norm.append(p)
    return polys_to_mask(norm, M, M)


def polys_to_boxes(polys):
    """Tight (x1, y1, x2, y2) boxes (float32, (N, 4)) of a list of objects' polygons."""
    boxes = np.zeros((len(polys), 4), dtype=np.float32)
    for i, segm in enumerate(polys):
        xs = np.concatenate([np.asarray(p, dtype=np.float64)[0::2] for p in segm])
        ys = np.concatenate([np.asarray(p, dtype=np.float64)[1::2] for p in segm])
        boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max())
    return boxes


def rle_mask_wrt_box(rle, box, M):
    """Sample an RLE mask inside ``box`` onto an M x M float32 grid (nearest neighbour)."""
    mask = mask_util.decode(rle).astype(np.float32)
    sx = max(0., (box[2] - box[0]) / M)
    sy = max(0., (box[3] - box[1]) / M)
    # Affine map from the M x M grid to image pixels, applied as an inverse map
    matrix = np.array([[sx, 0, box[0]], [0, sy, box[1]]], dtype=np.float64)
    return cv2.warpAffine(mask, matrix, (M, M), flags=cv2.WARP_INVERSE_MAP + cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT)


def rle_masks_to_boxes(masks):
    """Boxes (N, 4) of RLE masks and the indices of the non-empty ones."""
    if len(masks) == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    keep = []
    for i, rle in enumerate(masks):
        box = mask_to_bbox(mask_util.decode(rle))
        if box is not None:
            boxes[i] = box
            keep.append(i)
    return boxes, np.asarray(keep, dtype=np.int64)


def rle_mask_nms(masks, dets, thresh, mode='IOU'):
    """Greedy NMS of RLE masks by score (``dets[:, 4]``) with overlap measure ``mode``:
    'IOU', 'IOMA' (intersection over the smaller area) or 'CONTAINMENT'
    (intersection over the area of the lower-scored mask). Returns the kept indices.
    """
    if len(masks) == 0:
        return []
    if len(masks) == 1:
        return [0]
    if mode == 'IOU':
        ious = mask_util.iou(masks, masks, [False] * len(masks))
    elif mode in ('IOMA', 'CONTAINMENT'):
        # with iscrowd=True pycocotools divides the intersection by the second mask's area
        ious = mask_util.iou(masks, masks, [True] * len(masks))
        if mode == 'IOMA':
            ious = np.maximum(ious, ious.T)
    else:
        raise ValueError("rle_mask_nms: mode must be 'IOU', 'IOMA' or 'CONTAINMENT', got %r" % mode)
    order = np.argsort(-dets[:, 4], kind='stable')
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        order = order[1:][ious[i, order[1:]] <= thresh]
    return keep


def rle_mask_voting(top_masks, all_masks, all_dets, iou_thresh, binarize_thresh, method='AVG'):
    """Refine each of ``top_masks`` by voting among the masks of ``all_masks`` that overlap it
    by at least ``iou_thresh``: 'AVG' averages them with per-pixel weights equal to the detection
    score inside each detection's box (then thresholds at ``binarize_thresh``); 'UNION' takes
    every pixel any of them covers. Returns a list of RLEs in correspondence with ``top_masks``.
    """
    if len(top_masks) == 0:
        return []
    if method not in ('AVG', 'UNION'):
        raise ValueError("rle_mask_voting: method must be 'AVG' or 'UNION', got %r" % method)
    overlaps = mask_util.iou(top_masks, all_masks, [False] * len(all_masks))
    decoded_all = [mask_util.decode(r).astype(np.float32) for r in all_masks]
    decoded_top = [mask_util.decode(r) for r in top_masks]
    boxes = all_dets[:, :4].astype(np.int32)
    scores = all_dets[:, 4]
    h, w = decoded_all[0].shape
    weights = np.zeros((len(all_masks), h, w), dtype=np.float64)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        weights[k, max(y1, 0):min(y2 + 1, h), max(x1, 0):min(x2 + 1, w)] = scores[k]
    weights = np.maximum(weights, 1e-5)

    out = []
    for k in range(len(top_masks)):
        voters = np.where(overlaps[k] >= iou_thresh)[0]
        if decoded_top[k].sum() == 0 or len(voters) == 1:
            out.append(top_masks[k])
            continue
        stack = np.stack([decoded_all[i] for i in voters])
        if method == 'AVG':
            soft = np.average(stack, axis=0, weights=weights[voters])
            mask = soft > binarize_thresh
        else:
            mask = stack.sum(axis=0) > 1e-5
        out.append(mask_to_rle(mask))
    return out
