"""PASCAL VOC folders as datasets, without a conversion step.

A VOC-layout folder (``<root>``, e.g. ``VOCdevkit/VOC2007``)::

    <root>/Annotations/<index>.xml          one XML per image (size, objects, difficult flags)
    <root>/ImageSets/Main/<split>.txt       the image indices of each split, one a line
    <root>/JPEGImages/<index>.jpg           the images

is read on the fly: ``voc_to_coco_json(root, split)`` parses the split's XML files once and
writes a COCO-style JSON into the cache (``cfg.CACHE_DIR/voc``, keyed by the folder and split, and
rewritten when the split file, the Annotations folder or labels.txt is newer than it; delete it
after editing an XML file in place). The rest of the package then
sees an ordinary COCO-format dataset (``JsonDataset``); the VOC evaluator
(``voc_dataset_evaluator``) reads the XML files directly, as Detectron's does.

Conversion rules (Detectron's VOC JSON files and py-faster-rcnn's ``pascal_voc``):
  * image ids are 1, 2, ... in the order of the split file, so the roidb order is that order;
    ``file_name`` is ``<index>.jpg`` (or the extension found in JPEGImages);
  * VOC boxes are 1-based and inclusive: ``[xmin, ymin, xmax, ymax]`` becomes the COCO box
    ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (0-based, +1 widths);
  * objects marked ``difficult`` are kept in the JSON with ``"difficult": 1, "ignore": 1``:
    training drops them (py-faster-rcnn's ``use_diff=False``) and the VOC evaluator neither counts
    them as positives nor their detections as false positives;
  * boxes only (``"segmentation": []``): VOC detection has no instance masks;
  * categories: the names in ``<root>/labels.txt`` (one a line) when that file exists; else the 20
    VOC classes in their usual order when every object name is one of them; else the sorted
    names found in all of ``Annotations/`` (so every split of a folder has the same classes).
    Category ids are 1..C in that order.
"""
import hashlib
import json
import logging
import os
import re
import xml.etree.ElementTree as ET

logger = logging.getLogger(__name__)

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')

# Bump when the JSON written changes, so old cache files are not reused.
_FORMAT_VERSION = 1


class VocLayoutError(FileNotFoundError):
    """A folder that is not a usable VOC layout (a user error: the tools print one line)."""


def annotation_path(root, index):
    return os.path.join(root, 'Annotations', index + '.xml')


def image_set_path(root, split):
    return os.path.join(root, 'ImageSets', 'Main', split + '.txt')


def year_of(root):
    """The VOC year of a folder named like ``VOC2007`` (None when the name has none)."""
    m = re.search(r'VOC(\d{4})', os.path.basename(os.path.normpath(root)))
    return int(m.group(1)) if m else None


def use_07_metric_for(root):
    """VOC's metric changed in 2010: the 11-point AP for VOC2007 (and earlier), the area under
    the precision envelope otherwise (folders without a year included)."""
    year = year_of(root)
    return year is not None and year < 2010


def check_layout(root, split):
    """Raise ``VocLayoutError`` naming what is missing."""
    for sub in ('Annotations', 'JPEGImages'):
        if not os.path.isdir(os.path.join(root, sub)):
            raise VocLayoutError('VOC dataset %s: folder %s not found (a VOC layout has '
                                 'Annotations/, ImageSets/Main/ and JPEGImages/)'
                                 % (root, os.path.join(root, sub)))
    path = image_set_path(root, split)
    if not os.path.isfile(path):
        main = os.path.join(root, 'ImageSets', 'Main')
        have = sorted(f[:-4] for f in os.listdir(main) if f.endswith('.txt') and '_' not in f) \
            if os.path.isdir(main) else []
        raise VocLayoutError('VOC dataset %s: split file %s not found%s' % (
            root, path, ' (splits here: %s)' % ', '.join(have) if have else ''))


def read_image_set(root, split):
    with open(image_set_path(root, split), 'r') as f:
        # VOC split files hold the index first; class files add a label column
        return [line.split()[0] for line in f if line.strip()]


def _int(node, tag, xml_path, default=None):
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise ValueError('%s: <%s> missing in <%s>' % (xml_path, tag, node.tag))
    return int(float(child.text))


def parse_voc_xml(xml_path):
    """``{'width', 'height', 'objects': [{'name', 'difficult', 'bbox': [xmin, ymin, xmax, ymax]}]}``
    from one VOC annotation file (1-based inclusive pixel coordinates, as written)."""
    if not os.path.isfile(xml_path):
        raise VocLayoutError('VOC annotation %s not found' % xml_path)
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise ValueError('%s is not valid XML: %s' % (xml_path, e))
    size = tree.find('size')
    width = _int(size, 'width', xml_path, 0) if size is not None else 0
    height = _int(size, 'height', xml_path, 0) if size is not None else 0
    objects = []
    for obj in tree.findall('object'):
        name = obj.find('name')
        box = obj.find('bndbox')
        if name is None or box is None:
            raise ValueError('%s: an <object> without <name> or <bndbox>' % xml_path)
        objects.append({
            'name': name.text.strip(),
            'difficult': _int(obj, 'difficult', xml_path, 0),
            'bbox': [_int(box, t, xml_path) for t in ('xmin', 'ymin', 'xmax', 'ymax')]})
    return {'width': width, 'height': height, 'objects': objects}


def class_names(root):
    """The dataset's classes (see the module docstring)."""
    labels = os.path.join(root, 'labels.txt')
    if os.path.isfile(labels):
        with open(labels, 'r') as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError('%s is empty: list one class name a line' % labels)
        return tuple(names)
    ann_dir = os.path.join(root, 'Annotations')
    found = set()
    for fn in sorted(os.listdir(ann_dir)):
        if fn.endswith('.xml'):
            found.update(o['name'] for o in parse_voc_xml(os.path.join(ann_dir, fn))['objects'])
    if found <= set(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(sorted(found))


def _image_files(root):
    """index -> file name in JPEGImages."""
    files = {}
    for fn in os.listdir(os.path.join(root, 'JPEGImages')):
        stem, ext = os.path.splitext(fn)
        if ext.lower() in ('.jpg', '.jpeg', '.png', '.bmp') and (stem not in files or
                                                                 ext == '.jpg'):
            files[stem] = fn
    return files


def _image_size(path):
    import cv2
    im = cv2.imread(path)
    if im is None:
        raise VocLayoutError('VOC image %s could not be read' % path)
    return im.shape[1], im.shape[0]


def build_coco_dict(root, split):
    """The COCO-style dict of one split (see the module docstring)."""
    check_layout(root, split)
    classes = class_names(root)
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    files = _image_files(root)
    images, annotations = [], []
    unknown = set()
    for image_id, index in enumerate(read_image_set(root, split), start=1):
        if index not in files:
            raise VocLayoutError('VOC dataset %s: image %s of split %s not found in %s' % (
                root, index, split, os.path.join(root, 'JPEGImages')))
        rec = parse_voc_xml(annotation_path(root, index))
        width, height = rec['width'], rec['height']
        if width <= 0 or height <= 0:
            width, height = _image_size(os.path.join(root, 'JPEGImages', files[index]))
        images.append({'id': image_id, 'file_name': files[index], 'width': width,
                       'height': height, 'voc_index': index})
        for obj in rec['objects']:
            if obj['name'] not in cat_ids:
                unknown.add(obj['name'])
                continue
            x1, y1, x2, y2 = obj['bbox']
            w, h = x2 - x1 + 1, y2 - y1 + 1
            ann = {'id': len(annotations) + 1, 'image_id': image_id,
                   'category_id': cat_ids[obj['name']], 'bbox': [x1 - 1, y1 - 1, w, h],
                   'area': float(w * h), 'iscrowd': 0, 'segmentation': [],
                   'difficult': obj['difficult']}
            if obj['difficult']:
                ann['ignore'] = 1
            annotations.append(ann)
    if unknown:
        logger.warning('VOC dataset %s: objects of classes %s are not in the class list; '
                       'skipped', root, ', '.join(sorted(unknown)))
    return {'images': images, 'annotations': annotations,
            'categories': [{'id': cat_ids[n], 'name': n} for n in classes],
            'info': {'voc_root': os.path.abspath(root), 'voc_split': split}}


def _newest_mtime(root, split):
    paths = [image_set_path(root, split), os.path.join(root, 'Annotations'),
             os.path.join(root, 'labels.txt')]
    return max(os.path.getmtime(p) for p in paths if os.path.exists(p))


def cache_path(root, split, cache_dir):
    root = os.path.abspath(root)
    digest = hashlib.sha1(('%s|%s|%d' % (root, split, _FORMAT_VERSION)).encode('utf-8'))
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(os.path.normpath(root)))
    return os.path.join(cache_dir, 'voc', '%s_%s_%s.json' % (stem, split, digest.hexdigest()[:8]))


def voc_to_coco_json(root, split, cache_dir):
    """Path of the cached COCO-style JSON of ``root``'s ``split``, written when missing or older
    than the split file, the Annotations folder or labels.txt."""
    check_layout(root, split)
    path = cache_path(root, split, cache_dir)
    if os.path.isfile(path) and os.path.getmtime(path) >= _newest_mtime(root, split):
        return path
    logger.info('VOC dataset %s (%s): converting the XML annotations to %s', root, split, path)
    data = build_coco_dict(root, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = '%s.tmp%d' % (path, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(data, f)
    os.replace(tmp, path)   # atomic: a concurrent reader never sees half a file
    return path


# The folder-dataset interface dataset_catalog uses (shared with datasets/cityscapes.py).
to_coco_json = voc_to_coco_json


def default_split(root):
    """``trainval`` when the folder has it, else ``train``."""
    return 'trainval' if os.path.isfile(image_set_path(root, 'trainval')) else 'train'


def image_dir(root, split):
    return os.path.join(root, 'JPEGImages')
