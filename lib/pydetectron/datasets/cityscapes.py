"""Cityscapes folders as instance-segmentation datasets, without a conversion step.

The Cityscapes layout (``<root>``, the folder holding ``leftImg8bit`` and ``gtFine``)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png

``to_coco_json(root, split, cache_dir)`` turns the ``*_gtFine_instanceIds.png`` of a split into a
cached COCO-style JSON (``cache_dir/cityscapes``), as Detectron's ``convert_cityscapes_to_coco``
did: one annotation per instance (pixel value ``label_id * 1000 + k``) of the 8 instance classes
(person, rider, car, truck, bus, train, motorcycle, bicycle; category ids 1..8 in that order, as
in Detectron's JSON files), its outer contours (OpenCV) as polygons, its pixel count as the area;
group regions (pixel value = a label id < 1000) are not training instances. ``file_name`` is
``<city>/<name>_leftImg8bit.png`` under ``leftImg8bit/<split>``. The evaluator
(``cityscapes_evaluator``) reads the instanceIds images themselves.
"""
import hashlib
import json
import logging
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

# name -> Cityscapes label id, for the classes the instance-level benchmark scores
INSTANCE_CLASSES = (('person', 24), ('rider', 25), ('car', 26), ('truck', 27), ('bus', 28),
                    ('train', 31), ('motorcycle', 32), ('bicycle', 33))
# Label ids Cityscapes ignores in evaluation (its 'ignoreInEval' labels): unlabeled, ego vehicle,
# rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail,
# bridge, tunnel, polegroup, caravan, trailer, license plate
VOID_LABEL_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, -1)

_FORMAT_VERSION = 1
_GT_SUFFIX = '_gtFine_instanceIds.png'
_IM_SUFFIX = '_leftImg8bit.png'


class CityscapesLayoutError(FileNotFoundError):
    """A folder that is not a usable Cityscapes layout (a user error)."""


def default_split(root):
    return 'train'


def image_dir(root, split):
    return os.path.join(root, 'leftImg8bit', split)


def check_layout(root, split):
    for sub in ('leftImg8bit', 'gtFine'):
        path = os.path.join(root, sub, split)
        if not os.path.isdir(path):
            raise CityscapesLayoutError(
                'Cityscapes dataset %s: folder %s not found (a Cityscapes layout has '
                'leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/)' % (root, path))


def gt_instance_file(root, split, file_name):
    """The ``*_gtFine_instanceIds.png`` of an image ``<city>/<name>_leftImg8bit.png``."""
    if not file_name.endswith(_IM_SUFFIX):
        raise ValueError('Cityscapes image %s does not end in %s' % (file_name, _IM_SUFFIX))
    return os.path.join(root, 'gtFine', split, file_name[:-len(_IM_SUFFIX)] + _GT_SUFFIX)


def read_instance_ids(path):
    """The instanceIds image as an int32 array (values up to 33999: 16-bit PNGs)."""
    import cv2
    im = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if im is None:
        raise CityscapesLayoutError('Cityscapes ground truth %s not found or unreadable' % path)
    if im.ndim != 2:
        raise ValueError('%s: expected a one-channel instanceIds image' % path)
    return im.astype(np.int32)


def instance_polygons(mask):
    """Outer contours of a binary mask as flat [x0, y0, x1, y1, ...] lists (>= 3 points)."""
    import cv2
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def build_coco_dict(root, split):
    check_layout(root, split)
    cat_of_label = {label_id: i + 1 for i, (_, label_id) in enumerate(INSTANCE_CLASSES)}
    images, annotations = [], []
    im_root = image_dir(root, split)
    for city in sorted(os.listdir(im_root)):
        city_dir = os.path.join(im_root, city)
        if not os.path.isdir(city_dir):
            continue
        for fn in sorted(os.listdir(city_dir)):
            if not fn.endswith(_IM_SUFFIX):
                continue
            file_name = city + '/' + fn
            ids = read_instance_ids(gt_instance_file(root, split, file_name))
            image_id = len(images) + 1
            images.append({'id': image_id, 'file_name': file_name, 'width': int(ids.shape[1]),
                           'height': int(ids.shape[0]),
                           'seg_file_name': os.path.basename(
                               gt_instance_file(root, split, file_name))})
            for inst in np.unique(ids):
                if inst < 1000 or inst // 1000 not in cat_of_label:
                    continue
                mask = ids == inst
                polys = instance_polygons(mask)
                if not polys:
                    continue
                ys, xs = np.nonzero(mask)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
                annotations.append({
                    'id': len(annotations) + 1, 'image_id': image_id,
                    'category_id': cat_of_label[inst // 1000], 'segmentation': polys,
                    'area': float(mask.sum()), 'iscrowd': 0,
                    'bbox': [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)]})
    if not images:
        raise CityscapesLayoutError('Cityscapes dataset %s: no *%s images under %s'
                                    % (root, _IM_SUFFIX, im_root))
    return {'images': images, 'annotations': annotations,
            'categories': [{'id': i + 1, 'name': n} for i, (n, _) in enumerate(INSTANCE_CLASSES)],
            'info': {'cityscapes_root': os.path.abspath(root), 'split': split}}


def cache_path(root, split, cache_dir):
    root = os.path.abspath(root)
    digest = hashlib.sha1(('%s|%s|%d' % (root, split, _FORMAT_VERSION)).encode('utf-8'))
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(os.path.normpath(root)))
    return os.path.join(cache_dir, 'cityscapes',
                        '%s_%s_%s.json' % (stem, split, digest.hexdigest()[:8]))


def to_coco_json(root, split, cache_dir):
    """Path of the cached COCO-style JSON of ``root``'s ``split`` (written when missing, or older
    than the split's gtFine folder)."""
    check_layout(root, split)
    path = cache_path(root, split, cache_dir)
    if os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(
            os.path.join(root, 'gtFine', split)):
        return path
    logger.info('Cityscapes dataset %s (%s): converting the instanceIds images to %s', root,
                split, path)
    data = build_coco_dict(root, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = '%s.tmp%d' % (path, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path
