"""Integrity of a COCO-format annotation file, checked once when it is loaded.

pycocotools trusts its input: it indexes records by id (the last duplicate wins), keeps
annotations whose image or category does not exist, and passes NaN or negative numbers on to the
targets. ``check_coco_dataset(data, ann_fn, ...)`` looks at every record first and sorts each
problem by one rule:

* **Error** (``DatasetError``, the file and the first offending records named) when the problem
  makes the *meaning of other records* unknowable or the file is not COCO at all: the top-level
  shape ('images' and 'categories' lists, 'annotations' a list), a record that is not an object
  or lacks a required field, ids that are not integers, duplicate image, annotation or category
  ids and duplicate category names (ids join images, annotations and classes: with a duplicate,
  which annotation belongs where -- and what the evaluation counts -- is a guess).
* **Skip** (counted, the first ones named with annotation and image ids, one summary line) when
  the problem is confined to one annotation or one image, so training and evaluation on the rest
  stay exactly what they would be without it: an annotation whose image or category does not
  exist, whose bbox, area, polygon or keypoint numbers are not finite or are negative, whose
  bbox is not 4 numbers, whose RLE size disagrees with its image's or whose RLE counts do not
  add up, whose keypoint visibilities are outside {0, 1, 2}, whose 'iscrowd' is not 0 or 1;
  an image whose width / height are not positive integers, or disagree with the file on disk
  (all its annotations go with it). Skipped records are removed before the index is built.

The image files are checked by reading their headers: a sample spread evenly over the dataset
(``check_images='sample'``, what loading does), every file (``'all'``, what
``tools/check_dataset.py --all_images`` does, decoding each fully to find truncated files too),
or none.
"""
import logging
import math
import os
from collections import Counter, OrderedDict

import numpy as np

from pydetectron.utils.errors import DatasetError, ImageError

logger = logging.getLogger(__name__)

REQUIRED_IMAGE_FIELDS = ('id', 'file_name', 'width', 'height')
REQUIRED_ANN_FIELDS = ('id', 'image_id', 'category_id', 'bbox')
REQUIRED_CATEGORY_FIELDS = ('id', 'name')

# Image files checked against the JSON's width / height when a dataset is loaded.
DEFAULT_SAMPLE_SIZE = 32
# Problems of one kind named one by one in the log (the rest are counted).
MAX_NAMED = 10

# kind of skip -> how the summary line names it
SKIP_KINDS = OrderedDict([
    ('missing_image', 'image_id not in images'),
    ('missing_category', 'category_id not in categories'),
    ('bad_bbox', 'bbox not 4 finite numbers >= 0'),
    ('bad_area', 'area not a finite number >= 0'),
    ('bad_polygon', 'polygon with non-finite or negative coordinates'),
    ('bad_rle', 'RLE malformed or of another size than its image'),
    ('bad_keypoints', 'keypoints not finite, negative or visibility outside {0, 1, 2}'),
    ('bad_iscrowd', 'iscrowd not 0 or 1'),
    ('bad_image_size', 'image width / height not positive integers'),
    ('image_file_size', 'image file of another size than the JSON says'),
    ('image_file_unreadable', 'image file missing, truncated or corrupt'),
])


class IntegrityReport:
    """What ``check_coco_dataset`` found: skipped annotation / image ids by kind, and notes."""

    def __init__(self, ann_fn):
        self.ann_fn = ann_fn
        self.skips = OrderedDict((k, []) for k in SKIP_KINDS)   # kind -> [(ann id, image id, why)]
        self.skipped_ann_ids = set()
        self.skipped_image_ids = set()
        self.num_images = self.num_annotations = self.num_categories = 0
        self.images_checked = 0

    def skip_annotation(self, kind, ann, why):
        self.skips[kind].append((ann.get('id'), ann.get('image_id'), why))
        self.skipped_ann_ids.add(id(ann))

    def skip_image(self, kind, image, why):
        self.skips[kind].append((None, image.get('id'), why))
        self.skipped_image_ids.add(image.get('id'))

    @property
    def num_skipped(self):
        return sum(len(v) for v in self.skips.values())

    def lines(self, max_named=MAX_NAMED):
        """The warnings naming the first skipped records of each kind."""
        out = []
        for kind, items in self.skips.items():
            for ann_id, image_id, why in items[:max_named]:
                who = ('annotation {} (image {})'.format(ann_id, image_id) if ann_id is not None
                       else 'image {}'.format(image_id))
                out.append('{}: {}: {}; skipped'.format(self.ann_fn, who, why))
            if len(items) > max_named:
                out.append('{}: ... and {} more: {}'.format(self.ann_fn, len(items) - max_named,
                                                            SKIP_KINDS[kind]))
        return out

    def summary(self):
        """One line: what was skipped, by kind, and what is left."""
        anns = sum(len(v) for k, v in self.skips.items() if not k.startswith(('image', 'bad_im')))
        ims = len(self.skipped_image_ids)
        kinds = ', '.join('{} {}'.format(len(v), SKIP_KINDS[k]) for k, v in self.skips.items()
                          if v)
        if not kinds:
            return '{}: {} images, {} annotations, {} categories: no integrity problems{}'.format(
                self.ann_fn, self.num_images, self.num_annotations, self.num_categories,
                ' ({} image files checked)'.format(self.images_checked)
                if self.images_checked else '')
        return ('{}: skipped {} of {} annotations and {} of {} images ({}); the rest is used{}'
                .format(self.ann_fn, anns, self.num_annotations, ims, self.num_images, kinds,
                        ' ({} image files checked)'.format(self.images_checked)
                        if self.images_checked else ''))


# ---------------------------------------------------------------------------------------------- #

def _is_int(v):
    return type(v) is int


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite_non_negative(values):
    """True if ``values`` is a list of numbers, all finite and >= 0 (fast: this runs over every
    coordinate of COCO train2017)."""
    if type(values) is not list:
        return False
    if not values:
        return True
    try:
        # fsum is exact and C-fast: NaN or an infinity makes the sum non-finite (or raises),
        # a string or a nested list raises
        total = math.fsum(values)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(total) and min(values) >= 0


def _fail(ann_fn, msg):
    raise DatasetError('{}: {}'.format(ann_fn, msg))


def _check_records(records, required, what, ann_fn):
    if not isinstance(records, list):
        _fail(ann_fn, "the top-level field '{}' is a {}, expected a list".format(
            what, type(records).__name__))
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            _fail(ann_fn, '{}[{}] is a {}, expected a JSON object'.format(
                what, i, type(rec).__name__))
        for field in required:
            if field not in rec:
                ident = rec.get('id', 'index %d' % i)
                _fail(ann_fn, "{} entry (id {}) is missing the required field '{}'".format(
                    what, ident, field))
        if not _is_int(rec['id']):
            _fail(ann_fn, "{}[{}] has the id {!r}; expected an integer".format(
                what, i, rec['id']))


def _check_unique(records, key, what, ann_fn):
    counts = Counter(r[key] for r in records)
    dups = [k for k, n in counts.items() if n > 1]
    if dups:
        _fail(ann_fn, '{} duplicate {} {}s (e.g. {}): ids join images, annotations and classes, '
              'so which record is meant is unknown; make them unique'.format(
                  len(dups), what, key, ', '.join(repr(d) for d in sorted(dups, key=str)[:5])))


def check_structure(data, ann_fn):
    """Raise ``DatasetError`` for the problems that are errors (see the module docstring)."""
    if not isinstance(data, dict):
        _fail(ann_fn, 'expected a JSON object with images/annotations/categories, got a {}'
              .format(type(data).__name__))
    for field in ('images', 'categories'):
        if field not in data:
            _fail(ann_fn, "missing the required top-level field '{}'".format(field))
    _check_records(data['images'], REQUIRED_IMAGE_FIELDS, 'images', ann_fn)
    _check_records(data['categories'], REQUIRED_CATEGORY_FIELDS, 'categories', ann_fn)
    anns = data.get('annotations', [])
    _check_records(anns, REQUIRED_ANN_FIELDS, 'annotations', ann_fn)
    for c in data['categories']:
        if not isinstance(c['name'], str) or not c['name']:
            _fail(ann_fn, 'category {} has the name {!r}; expected a non-empty string'.format(
                c['id'], c['name']))
        kps = c.get('keypoints')
        if kps is not None and not (isinstance(kps, list) and all(isinstance(k, str)
                                                                  for k in kps)):
            _fail(ann_fn, "category {}: 'keypoints' must be a list of names".format(c['id']))
    _check_unique(data['images'], 'id', 'image', ann_fn)
    _check_unique(data['categories'], 'id', 'category', ann_fn)
    _check_unique(data['categories'], 'name', 'category', ann_fn)
    _check_unique(anns, 'id', 'annotation', ann_fn)


def _check_rle(segm, height, width):
    """None if the RLE is well formed for an image of (height, width), else why not."""
    size = segm.get('size')
    counts = segm.get('counts')
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
        return "RLE 'size' {!r} is not [height, width]".format(size)
    if list(size) != [height, width]:
        return 'RLE size {}x{} (h x w) but the image is {}x{}'.format(size[0], size[1], height,
                                                                      width)
    if isinstance(counts, list):
        if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0):
            return 'RLE counts are not non-negative integers'
        if sum(counts) != height * width:
            return 'RLE counts add up to {}, not height x width = {}'.format(
                sum(counts), height * width)
    elif not isinstance(counts, str):
        return "RLE 'counts' is a {}, expected a list or a string".format(type(counts).__name__)
    return None


def _check_annotation(ann, image, keypoint_counts, report):
    """Add a skip to ``report`` if ``ann`` is unusable; True when it is kept."""
    bbox = ann['bbox']
    if not (isinstance(bbox, list) and len(bbox) == 4 and _finite_non_negative(bbox)):
        report.skip_annotation('bad_bbox', ann, 'bbox {!r} is not 4 finite numbers >= 0'.format(
            bbox))
        return False
    if 'area' in ann and not (_is_number(ann['area']) and math.isfinite(ann['area'])
                              and ann['area'] >= 0):
        report.skip_annotation('bad_area', ann, 'area {!r} is not a finite number >= 0'.format(
            ann['area']))
        return False
    if ann.get('iscrowd', 0) not in (0, 1):
        report.skip_annotation('bad_iscrowd', ann, 'iscrowd {!r} is not 0 or 1'.format(
            ann['iscrowd']))
        return False
    segm = ann.get('segmentation')
    if isinstance(segm, list):
        for poly in segm:
            if not _finite_non_negative(poly):
                report.skip_annotation('bad_polygon', ann, 'a polygon has non-finite, negative '
                                       'or non-numeric coordinates')
                return False
    elif isinstance(segm, dict):
        why = _check_rle(segm, image['height'], image['width'])
        if why:
            report.skip_annotation('bad_rle', ann, why)
            return False
    kps = ann.get('keypoints')
    if kps:
        if not _finite_non_negative(kps) or len(kps) % 3:
            report.skip_annotation('bad_keypoints', ann, 'keypoints are not finite numbers >= 0 '
                                   'in (x, y, v) triples')
            return False
        vis = set(kps[2::3])
        if not vis <= {0, 1, 2}:
            report.skip_annotation('bad_keypoints', ann, 'keypoint visibilities {} are not in '
                                   '{{0, 1, 2}}'.format(sorted(vis - {0, 1, 2})))
            return False
    return True


def _sample(images, n):
    if n is None or n >= len(images):
        return list(images)
    idx = np.linspace(0, len(images) - 1, n).round().astype(int)
    return [images[i] for i in sorted(set(idx.tolist()))]


def check_image_files(images, image_dir, image_prefix, report, check_images='sample',
                      sample_size=DEFAULT_SAMPLE_SIZE):
    """Compare width / height of the JSON with the files (``check_images``: 'sample', 'all',
    'none' or a sample size); mismatches and (with 'all') unreadable files become image skips.
    A missing file is left to the roidb (reported there and skipped for training)."""
    from pydetectron.utils.image_io import image_size, read_image
    if check_images in (None, 'none', False, 0) or image_dir is None:
        return
    if type(check_images) is int and check_images > 0:      # a sample of that size
        check_images, sample_size = 'sample', check_images
    if check_images not in ('sample', 'all'):
        raise ValueError("check_images must be 'sample', 'all', 'none' or a sample size, got %r"
                         % (check_images,))
    chosen = _sample(images, None if check_images == 'all' else sample_size)
    for image in chosen:
        path = os.path.join(image_dir, image_prefix + str(image['file_name']))
        if not os.path.exists(path):
            continue
        report.images_checked += 1
        try:
            if check_images == 'all':
                h, w = read_image(path).shape[:2]    # decodes: finds truncated files too
            else:
                h, w = image_size(path)
        except ImageError as e:
            report.skip_image('image_file_unreadable', image, str(e))
            continue
        if (h, w) != (image['height'], image['width']):
            report.skip_image('image_file_size', image, 'the file {} is {}x{} (w x h) but the '
                              'JSON says {}x{}'.format(path, w, h, image['width'],
                                                       image['height']))


def check_coco_dataset(data, ann_fn, image_dir=None, image_prefix='', check_images='sample',
                       sample_size=DEFAULT_SAMPLE_SIZE):
    """Check ``data`` (a parsed COCO JSON) in place: raise ``DatasetError`` for an error, remove
    the skipped images and annotations from ``data``, and return the ``IntegrityReport``."""
    check_structure(data, ann_fn)
    report = IntegrityReport(ann_fn)
    images = data['images']
    anns = data.get('annotations', [])
    report.num_images, report.num_annotations = len(images), len(anns)
    report.num_categories = len(data['categories'])
    for image in images:
        if not (_is_int(image['width']) and _is_int(image['height']) and image['width'] > 0
                and image['height'] > 0):
            report.skip_image('bad_image_size', image, 'width {!r} / height {!r} are not '
                              'positive integers'.format(image['width'], image['height']))
    good_images = [im for im in images if im['id'] not in report.skipped_image_ids]
    check_image_files(good_images, image_dir, image_prefix, report, check_images, sample_size)

    image_by_id = {im['id']: im for im in images}
    category_ids = {c['id'] for c in data['categories']}
    kept = []
    for ann in anns:
        image = image_by_id.get(ann['image_id'])
        if image is None:
            report.skip_annotation('missing_image', ann, 'image_id {!r} is not one of the '
                                   "images".format(ann['image_id']))
            continue
        if ann['image_id'] in report.skipped_image_ids:
            continue   # goes with its image
        if ann['category_id'] not in category_ids:
            report.skip_annotation('missing_category', ann, "category_id {!r} is not one of the "
                                   "dataset's categories {}".format(ann['category_id'],
                                                                    sorted(category_ids)))
            continue
        if _check_annotation(ann, image, None, report):
            kept.append(ann)
    if report.skipped_image_ids:
        data['images'] = [im for im in images if im['id'] not in report.skipped_image_ids]
    if 'annotations' in data and len(kept) != len(anns):
        data['annotations'] = kept
    return report


def log_report(report, log=logger):
    """Warnings naming the skipped records and the summary line (info when nothing was
    skipped)."""
    for line in report.lines():
        log.warning(line)
    if report.num_skipped:
        log.warning(report.summary())
    else:
        log.info(report.summary())
