"""Image blobs: BGR images -> mean-subtracted, rescaled, padded (N, 3, H, W) float32 inputs.

Detectron's conventions: images are BGR as cv2 reads them; the per-channel ``PIXEL_MEANS`` are
subtracted with no division by a std; the short side is scaled to a target size unless that
makes the long side exceed ``MAX_SIZE`` (then the long side is scaled to ``MAX_SIZE``); a batch
is zero-padded at the bottom/right to its largest image and, with FPN, further to a multiple of
``FPN.COARSEST_STRIDE`` so every pyramid level has an integer size.

Used by the training loader (``pydetectron.roi_data.minibatch``) and at test time
(``get_image_blob``).
"""
import collections
import functools

import numpy as np
import cv2


def get_im_scale(im_height, im_width, target_size, max_size):
    """Detectron's scale rule: short side -> ``target_size`` unless the rounded long side would
    exceed ``max_size``, then long side -> ``max_size``."""
    im_size_min = min(im_height, im_width)
    im_size_max = max(im_height, im_width)
    im_scale = float(target_size) / float(im_size_min)
    if np.round(im_scale * im_size_max) > max_size:
        im_scale = float(max_size) / float(im_size_max)
    return im_scale


def get_scaled_size(im_height, im_width, im_scale):
    """(height, width) of an image resized by ``im_scale`` (what cv2.resize with fx=fy gives)."""
    return int(np.round(im_height * im_scale)), int(np.round(im_width * im_scale))


def _pixel_means(pixel_means):
    """The means as a float64 (3,) array (B, G, R), as cfg.PIXEL_MEANS holds them."""
    means = np.asarray(pixel_means, dtype=np.float64)
    if means.size != 3:
        raise ValueError('pixel_means must hold 3 values (B, G, R), got shape %s'
                         % (np.shape(pixel_means),))
    return means.reshape(3)


@functools.lru_cache(maxsize=8)
def _mean_lut(means):
    """(1, 256, 3) float32 table: entry [0, p, c] = float32(p - means[c]) computed in float64."""
    table = np.arange(256, dtype=np.float64)[:, None] - np.asarray(means, np.float64)[None, :]
    return table.astype(np.float32).reshape(1, 256, 3)


def subtract_pixel_means(im, pixel_means):
    """``float32(im - pixel_means)`` with the subtraction done in float64 and rounded once.

    That is the rule of Detectron's ``prep_im_for_blob`` as Detectron.pytorch and Detectron's
    first releases write it (``im = im.astype(np.float32); im -= pixel_means`` with float64
    means: NumPy computes the in-place difference in float64 and casts it back). (Later
    Detectron versions call ``cv2.subtract``, which first rounds the means to float32; the two
    differ by one float32 step on about half of the values.) A uint8 image goes through a
    256-entry table per channel: the same bits, faster than a float64 temporary.
    """
    means = _pixel_means(pixel_means)
    if im.dtype == np.uint8:
        return cv2.LUT(np.ascontiguousarray(im), _mean_lut(tuple(means.tolist())))
    return (im.astype(np.float64) - means).astype(np.float32)


def prep_im_for_blob(im, pixel_means, target_sizes, max_size):
    """Subtract ``pixel_means`` from a BGR uint8 (H, W, 3) image and rescale it.

    ``target_sizes`` is one short-side size or a sequence of them. Returns ``(im, im_scale)``
    for a single size and ``(ims, im_scales)`` lists for a sequence, each image an (h, w, 3)
    float32 array (h, w = the scaled size). The means are subtracted (in float64, rounded once
    to float32: ``subtract_pixel_means``) before resizing in float32 with bilinear
    interpolation, as Detectron does.
    """
    if im is None or im.ndim != 3 or im.shape[2] != 3:
        raise ValueError('prep_im_for_blob: expected an (H, W, 3) BGR image, got %s'
                         % (None if im is None else im.shape,))
    im = subtract_pixel_means(im, pixel_means)
    single = np.isscalar(target_sizes)
    sizes = [target_sizes] if single else list(target_sizes)
    ims, im_scales = [], []
    for target_size in sizes:
        im_scale = get_im_scale(im.shape[0], im.shape[1], target_size, max_size)
        # fx/fy (not dsize) so the sampling grid is Detectron's exactly
        ims.append(cv2.resize(im, None, None, fx=im_scale, fy=im_scale,
                              interpolation=cv2.INTER_LINEAR))
        im_scales.append(im_scale)
    if single:
        return ims[0], im_scales[0]
    return ims, im_scales


def coarsest_stride(cfg=None):
    """What a blob's sides are padded to a multiple of: ``FPN.COARSEST_STRIDE`` with FPN, else 1
    (of ``cfg``, default the global config)."""
    if cfg is None:
        from pydetectron.core.config import cfg
    return int(cfg.FPN.COARSEST_STRIDE) if cfg.FPN.FPN_ON else 1


def padded_size(height, width, stride):
    """(height, width) rounded up to multiples of ``stride`` (no change for stride <= 1)."""
    if stride <= 1:
        return int(height), int(width)
    return int(np.ceil(height / float(stride)) * stride), int(np.ceil(width / float(stride)) * stride)


class ShapeBuckets(collections.namedtuple('ShapeBuckets', ['multiple', 'edges'])):
    """Sizes a blob side is rounded up to, so that input shapes repeat (``SHAPE_BUCKETS``): the
    multiples of ``multiple`` and the sizes in ``edges`` (the scale rule's largest sides, e.g.
    800 and 1344 at 800 / 1333: most COCO blobs have one of them, and they stay unpadded)."""

    def round_up(self, size):
        """The smallest multiple of ``multiple`` or entry of ``edges`` that is >= ``size``."""
        size = int(size)
        candidates = [-(-size // self.multiple) * self.multiple]
        candidates += [int(e) for e in self.edges if e >= size]
        return min(candidates)


def shape_buckets(multiple, scales, max_size, stride):
    """The ``ShapeBuckets`` of blobs made at short sides ``scales`` and ``max_size`` (None when
    ``multiple`` is 0: no bucket padding). ``multiple`` must be a multiple of ``stride``; the
    edges are ``scales`` and ``max_size`` rounded up to ``stride``, the largest short and long
    sides the scale rule makes."""
    multiple, stride = int(multiple), max(int(stride), 1)
    if multiple <= 0:
        return None
    if multiple % stride:
        raise ValueError('shape bucket multiple %d is not a multiple of the stride %d'
                         % (multiple, stride))
    sides = [int(s) for s in (tuple(scales) if np.iterable(scales) else (scales,))]
    edges = sorted({padded_size(s, s, stride)[0] for s in sides + [int(max_size)]})
    return ShapeBuckets(multiple, tuple(edges))


def cfg_shape_buckets(training):
    """``shape_buckets`` of ``cfg.SHAPE_BUCKETS`` for the training blobs (TRAIN.SCALES,
    TRAIN.MAX_SIZE) or the test blobs (TEST.SCALE, TEST.MAX_SIZE); None when it is 0."""
    from pydetectron.core.config import cfg
    if training:
        scales, max_size = cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE
    else:
        scales, max_size = cfg.TEST.SCALE, cfg.TEST.MAX_SIZE
    return shape_buckets(cfg.SHAPE_BUCKETS, scales, max_size, coarsest_stride())


def blob_shape(ims, stride, buckets=None):
    """(N, 3, H, W) of the blob holding images ``ims`` padded to a multiple of ``stride``, then
    (``buckets``, a ``ShapeBuckets``) up to the bucket sizes."""
    max_h = max(im.shape[0] for im in ims)
    max_w = max(im.shape[1] for im in ims)
    max_h, max_w = padded_size(max_h, max_w, stride)
    if buckets is not None:
        max_h, max_w = buckets.round_up(max_h), buckets.round_up(max_w)
    return len(ims), 3, max_h, max_w


def im_list_to_blob(ims, stride=None, out=None, buckets=None):
    """Stack (h, w, 3) float32 images into a zero-padded (N, 3, H, W) float32 blob.

    H, W are the largest height and width, rounded up to a multiple of ``stride``; ``stride``
    defaults to ``FPN.COARSEST_STRIDE`` when ``FPN.FPN_ON``, else no rounding. ``buckets`` (a
    ``ShapeBuckets``) pads further, with the same zeros, to a bucket size. ``out``: an array of
    exactly that shape to fill (its padding is zeroed) instead of a new one.
    """
    if not isinstance(ims, (list, tuple)):
        ims = [ims]
    if stride is None:
        stride = coarsest_stride()
    shape = blob_shape(ims, stride, buckets)
    if out is None:
        blob = np.zeros(shape, dtype=np.float32)
    else:
        if tuple(out.shape) != shape or out.dtype != np.float32:
            raise ValueError('im_list_to_blob: out must be float32 of shape %s, got %s %s'
                             % (shape, out.dtype, tuple(out.shape)))
        blob = out
    for i, im in enumerate(ims):
        h, w = im.shape[:2]
        if out is not None:
            blob[i, :, h:, :] = 0
            blob[i, :, :h, w:] = 0
        # HWC -> CHW one channel at a time (faster than a transposed copy)
        for c in range(3):
            blob[i, c, :h, :w] = im[:, :, c]
    return blob


def get_image_blob(im, target_scale, target_max_size, pixel_means=None, stride=None):
    """Test-time input for one BGR image at one scale.

    Returns ``(blob, im_scale, im_info)``: blob (1, 3, H, W) float32; im_scale a float;
    im_info (1, 3) float32 = (blob height, blob width, im_scale). As in Detectron, im_info holds
    the *padded* blob size at test time (keeping its results reproducible: boxes near the padded
    border are clipped a little less aggressively than with the true image size).
    ``pixel_means`` and ``stride`` default to ``cfg.PIXEL_MEANS`` and the FPN stride rule.
    """
    if pixel_means is None:
        from pydetectron.core.config import cfg
        pixel_means = cfg.PIXEL_MEANS
    processed, im_scale = prep_im_for_blob(im, pixel_means, target_scale, target_max_size)
    blob = im_list_to_blob([processed], stride=stride)
    im_info = np.array([[blob.shape[2], blob.shape[3], im_scale]], dtype=np.float32)
    return blob, im_scale, im_info


def get_max_shape(im_shapes, stride=1):
    """Largest (height, width) over a list of shapes, rounded up to ``stride``."""
    shapes = np.asarray(im_shapes).reshape(-1, len(im_shapes[0]))
    return padded_size(shapes[:, 0].max(), shapes[:, 1].max(), stride)


def zeros(shape, int32=False):
    """All-zero numpy array, float32 (or int32)."""
    return np.zeros(shape, dtype=np.int32 if int32 else np.float32)


def ones(shape, int32=False):
    """All-one numpy array, float32 (or int32)."""
    return np.ones(shape, dtype=np.int32 if int32 else np.float32)
