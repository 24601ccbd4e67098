"""The built-in ``shapes`` datasets: small synthetic COCO-format datasets that train in minutes.

``shapes_train`` / ``shapes_val``
    Coloured circles, squares (rotated) and triangles on textured backgrounds; categories
    1 circle, 2 square, 3 triangle (``MODEL.NUM_CLASSES`` 4). Two to six objects per image,
    drawn in order so later objects occlude earlier ones: an occluded object's segmentation is the
    polygon outline(s) of its visible part, its ``area`` the visible pixel count and its ``bbox``
    the visible extent; placements that would hide more than half of an object are redrawn.
    About one image in seven also holds a crowd region (a cluster of tiny shapes of one category)
    annotated once with ``iscrowd=1`` and an uncompressed RLE, as COCO annotates crowds.
``keypoints_shapes_train`` / ``keypoints_shapes_val``
    One category, ``triangle`` (``MODEL.NUM_CLASSES`` 2), whose vertices are COCO-format
    keypoints named ``top``, ``left``, ``right`` (flip map left <-> right); unannotated circles and
    squares are drawn as distractors and occluders. A vertex hidden by a later object is labeled
    with visibility 1, a visible one with 2. Crowds of tiny triangles carry no keypoints.

Images are 128 to 256 pixels a side (landscape and portrait), JPEG, written with the annotation
JSON under ``<data dir>/shapes/`` on first use (``dataset_catalog.prepare`` or ``JsonDataset``):
``shapes/<name>/*.jpg`` and ``shapes/annotations/<name>.json``. Generation is deterministic (a
fixed seed per split, an independent random stream per image) and is redone when the files are
missing or ``GENERATOR_VERSION`` changes. A few hundred images take a couple of seconds.
"""
import fcntl
import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np
import pycocotools.mask as mask_util

logger = logging.getLogger(__name__)

# Bump whenever the generated images or annotations would change.
GENERATOR_VERSION = 2

# name -> (number of images, seed, keypoints?)
SPLITS = {
    'shapes_train': (400, 1, False),
    'shapes_val': (100, 2, False),
    'keypoints_shapes_train': (400, 3, True),
    'keypoints_shapes_val': (100, 4, True),
}
DATASET_NAMES = tuple(SPLITS)

SHAPE_CATEGORIES = ('circle', 'square', 'triangle')
TRIANGLE_KEYPOINTS = ('top', 'left', 'right')

MIN_SIDE, MAX_SIDE = 128, 256
MIN_VISIBLE_FRACTION = 0.5
CROWD_PROBABILITY = 1. / 7


def relative_paths(name):
    """(image directory, annotation file) of a built-in split, relative to the data directory."""
    return 'shapes/' + name, 'shapes/annotations/%s.json' % name


def _stamp(name):
    num_images, seed, keypoints = SPLITS[name]
    return 'shapes generator v%d: %s, %d images, seed %d, keypoints %s' % (
        GENERATOR_VERSION, name, num_images, seed, keypoints)


def _is_current(im_dir, ann_fn, stamp_fn, name):
    if not (os.path.isfile(ann_fn) and os.path.isdir(im_dir) and os.path.isfile(stamp_fn)):
        return False
    with open(stamp_fn, 'r') as f:
        return f.read().strip() == _stamp(name)


def ensure_dataset(name, data_dir):
    """Generate split ``name`` under ``data_dir`` unless an up-to-date copy is there.

    Safe against concurrent callers (a file lock; files are written to a temporary folder and
    moved into place), so DataLoader workers or parallel tests may all call it.
    """
    if name not in SPLITS:
        raise KeyError('shapes: unknown split %r (known: %s)' % (name, ', '.join(SPLITS)))
    rel_im, rel_ann = relative_paths(name)
    im_dir, ann_fn = os.path.join(data_dir, rel_im), os.path.join(data_dir, rel_ann)
    stamp_fn = os.path.join(data_dir, 'shapes', name + '.stamp')
    if _is_current(im_dir, ann_fn, stamp_fn, name):
        return im_dir, ann_fn
    os.makedirs(os.path.dirname(ann_fn), exist_ok=True)
    with open(os.path.join(data_dir, 'shapes', '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_current(im_dir, ann_fn, stamp_fn, name):
                num_images, seed, keypoints = SPLITS[name]
                logger.info('Generating the %s dataset (%d images) under %s',
                            name, num_images, os.path.join(data_dir, 'shapes'))
                tmp = tempfile.mkdtemp(prefix='.%s.' % name, dir=os.path.join(data_dir, 'shapes'))
                try:
                    dataset = generate(os.path.join(tmp, 'images'), num_images, seed, keypoints)
                    with open(os.path.join(tmp, 'ann.json'), 'w') as f:
                        json.dump(dataset, f)
                    if os.path.isdir(im_dir):
                        shutil.rmtree(im_dir)
                    os.replace(os.path.join(tmp, 'images'), im_dir)
                    os.replace(os.path.join(tmp, 'ann.json'), ann_fn)
                    with open(stamp_fn, 'w') as f:
                        f.write(_stamp(name) + '\n')
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return im_dir, ann_fn


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def generate(image_dir, num_images, seed, keypoints=False):
    """Write ``num_images`` JPEGs into ``image_dir`` and return their COCO-format dict."""
    os.makedirs(image_dir, exist_ok=True)
    if keypoints:
        categories = [{'id': 1, 'name': 'triangle', 'supercategory': 'shape',
                       'keypoints': list(TRIANGLE_KEYPOINTS),
                       'skeleton': [[1, 2], [2, 3], [3, 1]]}]
    else:
        categories = [{'id': i + 1, 'name': n, 'supercategory': 'shape'}
                      for i, n in enumerate(SHAPE_CATEGORIES)]
    images, annotations = [], []
    for index in range(num_images):
        # One independent stream per image: an image does not depend on those before it
        rng = np.random.RandomState(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        image_id = index + 1
        im, anns = _render_image(rng, keypoints)
        file_name = '%06d.jpg' % image_id
        cv2.imwrite(os.path.join(image_dir, file_name), im, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({'id': image_id, 'file_name': file_name,
                       'height': im.shape[0], 'width': im.shape[1]})
        for ann in anns:
            ann['id'] = len(annotations) + 1
            ann['image_id'] = image_id
            annotations.append(ann)
    return {'info': {'description': 'pydetectron shapes', 'version': GENERATOR_VERSION,
                     'seed': seed},
            'licenses': [], 'images': images, 'annotations': annotations,
            'categories': categories}


def _background(rng, height, width):
    """Texture: a smooth random colour field, plus stripes, plus pixel noise. (H, W, 3) float."""
    grid = rng.uniform(40, 215, size=(rng.randint(2, 6), rng.randint(2, 6), 3)).astype(np.float32)
    im = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    im += (rng.uniform(5, 25) * stripes)[:, :, None]
    im += rng.normal(0, 6, size=im.shape).astype(np.float32)
    return im


def _shape_polygon(rng, kind, cx, cy, size):
    """Flat polygon [x0, y0, ...] of a shape centred at (cx, cy) spanning about ``size`` px;
    for a triangle the vertices come in the order top, left, right."""
    r = size / 2.
    if kind == 'circle':
        t = np.linspace(0, 2 * np.pi, 33)[:-1]
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    elif kind == 'square':
        # corners on a circle of radius 0.9 r, rotated by a random angle: side ~0.64 size
        t = rng.uniform(0, np.pi / 2) + np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        pts = np.stack([cx + 0.9 * r * np.cos(t), cy + 0.9 * r * np.sin(t)], axis=1)
    elif kind == 'triangle':
        j = rng.uniform(-0.2, 0.2, size=3) * r
        pts = np.array([[cx + j[0], cy - r],
                        [cx - r, cy + r * 0.8 + j[1]],
                        [cx + r, cy + r * 0.8 + j[2]]])
    else:
        raise ValueError(kind)
    return pts.reshape(-1)


def _raster(poly, height, width):
    rle = mask_util.frPyObjects([poly.tolist()], height, width)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


def _colour(rng):
    """A saturated colour (BGR): one channel high, one low, one anywhere."""
    c = np.array([rng.uniform(180, 255), rng.uniform(0, 70), rng.uniform(0, 255)])
    return c[rng.permutation(3)]


def _mask_polygons(mask):
    """Outline polygons (pixel centres) of a binary mask's connected parts, >= 3 points each."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) >= 3 and cv2.contourArea(c.astype(np.float32)) > 0:
            polys.append(c.reshape(-1).tolist())
    return polys


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': runs}


def _box_xywh(mask):
    ys, xs = np.where(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    # COCO's bbox of a mask: w, h count pixels (inclusive x2 = x + w - 1)
    return [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)]


def _render_image(rng, keypoints):
    """One image and its annotations (without ids). Objects are dicts of layers painted in order."""
    height, width = (int(v) for v in rng.randint(MIN_SIDE, MAX_SIDE + 1, size=2))
    im = _background(rng, height, width)
    layers = []  # each: dict(mask, colour, ann fields...)

    if rng.rand() < CROWD_PROBABILITY:
        layers.append(_crowd_layer(rng, height, width, keypoints))

    num_objects = rng.randint(2, 7)
    for _ in range(num_objects):
        if keypoints:
            kind = 'triangle' if rng.rand() < 0.7 else SHAPE_CATEGORIES[rng.randint(2)]
        else:
            kind = SHAPE_CATEGORIES[rng.randint(3)]
        layer = _place_shape(rng, kind, height, width, layers)
        if layer is not None:
            layer['annotated'] = (kind == 'triangle') if keypoints else True
            layers.append(layer)

    anns = []
    covered = np.zeros((height, width), dtype=bool)  # union of the layers above the current one
    for layer in reversed(layers):
        visible = layer['mask'] & ~covered
        layer['visible'] = visible
        layer['occluders'] = covered.copy()
        covered |= layer['mask']
    for layer in layers:
        im[layer['mask']] = layer['colour']
        if layer.get('annotated', False):
            ann = _annotation(layer, keypoints)
            if ann is not None:
                anns.append(ann)
    im += rng.normal(0, 4, size=im.shape).astype(np.float32)  # sensor noise over everything
    return np.clip(im, 0, 255).astype(np.uint8), anns


def _place_shape(rng, kind, height, width, layers):
    """A shape at a random spot fully inside the image that hides no earlier object by more than
    half; None after 20 failed tries."""
    for _ in range(20):
        size = rng.uniform(22, 0.45 * min(height, width))
        cx = rng.uniform(size / 2 + 1, width - size / 2 - 2)
        cy = rng.uniform(size / 2 + 1, height - size / 2 - 2)
        poly = _shape_polygon(rng, kind, cx, cy, size)
        mask = _raster(poly, height, width)
        if mask.sum() < 50:
            continue
        ok = True
        for other in layers:
            if other.get('crowd'):
                continue
            left = other['visible_now'] & ~mask
            if left.sum() < MIN_VISIBLE_FRACTION * other['mask'].sum():
                ok = False
                break
        if not ok:
            continue
        for other in layers:
            other['visible_now'] = other['visible_now'] & ~mask
        return {'mask': mask, 'visible_now': mask.copy(), 'poly': poly, 'kind': kind,
                'colour': _colour(rng)}
    return None


def _crowd_layer(rng, height, width, keypoints):
    """A cluster of 6-15 tiny shapes of one category: one crowd annotation."""
    kind = 'triangle' if keypoints else SHAPE_CATEGORIES[rng.randint(3)]
    region_w, region_h = rng.uniform(40, 0.6 * width), rng.uniform(30, 0.5 * height)
    x0, y0 = rng.uniform(0, width - region_w), rng.uniform(0, height - region_h)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.randint(6, 16)):
        size = rng.uniform(6, 12)
        cx = x0 + rng.uniform(size / 2, region_w - size / 2)
        cy = y0 + rng.uniform(size / 2, region_h - size / 2)
        mask |= _raster(_shape_polygon(rng, kind, cx, cy, size), height, width)
    return {'mask': mask, 'visible_now': mask.copy(), 'kind': kind, 'colour': _colour(rng),
            'crowd': True, 'annotated': True}


def _annotation(layer, keypoints):
    visible = layer['visible']
    area = int(visible.sum())
    if area == 0:
        return None
    category_id = 1 if keypoints else SHAPE_CATEGORIES.index(layer['kind']) + 1
    ann = {'category_id': category_id, 'area': float(area), 'bbox': _box_xywh(visible)}
    if layer.get('crowd'):
        ann['iscrowd'] = 1
        ann['segmentation'] = _uncompressed_rle(visible)
        if keypoints:
            ann['keypoints'] = [0] * (3 * len(TRIANGLE_KEYPOINTS))
            ann['num_keypoints'] = 0
        return ann
    ann['iscrowd'] = 0
    if visible.sum() == layer['mask'].sum():
        ann['segmentation'] = [[round(float(v), 2) for v in layer['poly']]]
    else:
        ann['segmentation'] = _mask_polygons(visible)
        if not ann['segmentation']:
            return None
    if keypoints:
        kps = []
        # vertices rounded to pixels inside the object's extent (a vertex may round one pixel
        # beyond the rasterized shape, which would put it outside its own box)
        ys, xs = np.where(layer['mask'])
        for x, y in layer['poly'].reshape(-1, 2):
            xi = int(min(max(round(x), xs.min()), xs.max()))
            yi = int(min(max(round(y), ys.min()), ys.max()))
            v = 1 if layer['occluders'][yi, xi] else 2
            kps += [xi, yi, v]
        ann['keypoints'] = kps
        ann['num_keypoints'] = len(TRIANGLE_KEYPOINTS)
    return ann
