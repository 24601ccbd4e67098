"""Synthetic COCO-like data: textured JPEGs with random polygon objects (and keypoints), and the
COCO json describing them."""
import json
import math
import os

import cv2
import numpy as np

import bench  # noqa: F401  (puts pydetectron on sys.path)
from pydetectron.utils.keypoints import get_keypoints

NUM_IMAGE_FILES = 8   # distinct JPEGs; the json repeats them under new image ids


def _random_polygon(rng, height, width):
    """A jittered ellipse with a COCO-like size: (2P,) [x0, y0, ...] and its inclusive box."""
    side = math.exp(rng.uniform(math.log(24), math.log(0.6 * min(height, width))))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.)))
    bw = min(width - 2, side * math.sqrt(aspect))
    bh = min(height - 2, side / math.sqrt(aspect))
    cx = rng.uniform(bw / 2 + 1, width - bw / 2 - 1)
    cy = rng.uniform(bh / 2 + 1, height - bh / 2 - 1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 16))
    radius = rng.uniform(0.75, 1.0, 16)
    xs = np.clip(cx + radius * np.cos(angles) * bw / 2, 0, width - 1)
    ys = np.clip(cy + radius * np.sin(angles) * bh / 2, 0, height - 1)
    poly = np.stack([xs, ys], axis=1).reshape(-1)
    return poly, (cx, cy, bw, bh)


def _keypoints_in(rng, center_box, num_keypoints):
    """``num_keypoints`` visible keypoints inside the ellipse: COCO's flat [x, y, v, ...]."""
    cx, cy, bw, bh = center_box
    r = np.sqrt(rng.uniform(0, 0.5, num_keypoints))
    t = rng.uniform(0, 2 * np.pi, num_keypoints)
    xs, ys = cx + r * np.cos(t) * bw / 2, cy + r * np.sin(t) * bh / 2
    return [float(v) for x, y in zip(xs, ys) for v in (round(x), round(y), 2)]


def make_synthetic_coco(out_dir, num_images, height, width, objects, keypoints, seed=0):
    """Write ``NUM_IMAGE_FILES`` JPEGs and a COCO json of ``num_images`` images (the files
    repeated under new ids, each with its own objects); returns the ``coco_json:`` spec."""
    rng = np.random.RandomState(seed)
    img_dir = os.path.join(out_dir, 'images')
    os.makedirs(img_dir, exist_ok=True)
    if keypoints:
        names = get_keypoints()[0]
        categories = [{'id': 1, 'name': 'person', 'supercategory': 'person', 'keypoints': names,
                       'skeleton': []}]
    else:
        categories = [{'id': c, 'name': 'class_%d' % c, 'supercategory': 'thing'}
                      for c in range(1, 81)]
    file_objects = []
    for f in range(NUM_IMAGE_FILES):
        # textured background (low-frequency colour noise) with the objects painted on it
        small = rng.randint(0, 256, (max(2, height // 32), max(2, width // 32), 3), np.uint8)
        im = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        im = cv2.add(im, rng.randint(0, 24, im.shape, np.uint8))
        objs = []
        for _ in range(objects):
            poly, center_box = _random_polygon(rng, height, width)
            color = tuple(int(c) for c in rng.randint(0, 256, 3))
            cv2.fillPoly(im, [np.round(poly.reshape(-1, 2)).astype(np.int32)], color)
            objs.append((poly, center_box))
        cv2.imwrite(os.path.join(img_dir, 'im_%d.jpg' % f), im, [cv2.IMWRITE_JPEG_QUALITY, 90])
        file_objects.append(objs)
    images, annotations = [], []
    for i in range(num_images):
        f = i % NUM_IMAGE_FILES
        images.append({'id': i + 1, 'file_name': 'im_%d.jpg' % f, 'height': height,
                       'width': width})
        for poly, center_box in file_objects[f]:
            xs, ys = poly[0::2], poly[1::2]
            x1, y1 = float(xs.min()), float(ys.min())
            ann = {'id': len(annotations) + 1, 'image_id': i + 1, 'iscrowd': 0,
                   'category_id': 1 if keypoints else int(rng.randint(1, 81)),
                   'segmentation': [[float(v) for v in poly]],
                   'area': float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) -
                                           np.dot(ys, np.roll(xs, 1)))),
                   'bbox': [x1, y1, float(xs.max()) - x1 + 1, float(ys.max()) - y1 + 1]}
            if keypoints:
                ann['keypoints'] = _keypoints_in(rng, center_box, len(categories[0]['keypoints']))
                ann['num_keypoints'] = len(categories[0]['keypoints'])
            annotations.append(ann)
    ann_file = os.path.join(out_dir, 'synthetic.json')
    with open(ann_file, 'w') as fh:
        json.dump({'images': images, 'annotations': annotations, 'categories': categories}, fh)
    return 'coco_json:%s:%s' % (ann_file, img_dir)
