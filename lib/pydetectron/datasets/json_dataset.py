"""A COCO-format JSON dataset and its roidb (Detectron's representation of a dataset).

``JsonDataset(name).get_roidb(...)`` returns a list with one dict per image, sorted by image id.
Each entry holds (R rows = G ground-truth boxes first, then any precomputed proposals; C classes;
K keypoints):

    id, image (absolute path), width, height, flipped (False here; True for the flipped copies
    ``roidb.combined_roidb_for_training`` appends), dataset (this JsonDataset),
    boxes             (R, 4) float32, (x1, y1, x2, y2) with inclusive corners: a COCO bbox
                      [x, y, w, h] becomes [x, y, x + w - 1, y + h - 1], clipped to the image
    segms             list of G segms: polygons (list of flat [x0, y0, ...] lists) or, for crowd
                      regions, COCO's RLE dict (uncompressed list counts or compressed string)
    gt_classes        (R,) int32, contiguous class ids (1..C-1, by sorted JSON category id);
                      0 for proposals
    seg_areas         (R,) float32, the JSON 'area' (0 for proposals)
    gt_overlaps       (R, C) float32 scipy.sparse.csr_matrix, as Detectron: 1 at a ground-truth
                      box's class, -1 over every class for crowd boxes (so they are never sampled),
                      for proposals the IoU with the best ground-truth box at that box's class
    is_crowd          (R,) bool
    box_to_gt_ind_map (R,) int32, index of each row's ground-truth box among the G rows (-1 for
                      proposals that overlap none)
    max_classes, max_overlaps  (R,) argmax / max of gt_overlaps over classes
    gt_keypoints      (G, 3, K) int32 rows (x, y, v) — keypoint datasets only
    has_visible_keypoints  bool — any ground-truth keypoint with v > 0

Bad data is reported, not fatal: annotations whose box is empty after clipping, or whose area is
zero, are dropped as Detectron drops them (counted in the log); polygons with fewer than 3 points
or no area are dropped with a warning naming the annotation id (an object left without polygons
is dropped too); a missing image file is reported here and skipped by
``roidb.filter_for_training``. A JSON missing a required field raises an error naming the file and
the field. There is no roidb cache: building the roidb of COCO train2017 takes under a minute.
"""
import copy
import io
import logging
import os
import contextlib

import numpy as np
import scipy.sparse

from pycocotools.coco import COCO
import pycocotools.mask as mask_util

from pydetectron.datasets import coco_integrity, dataset_catalog
from pydetectron.utils import boxes as box_utils
from pydetectron.utils.io import load_pickle_safe
from pydetectron.utils import keypoints as keypoint_utils
from pydetectron.utils import segms as segm_utils
from pydetectron.utils.errors import DatasetError, MissingFileError

logger = logging.getLogger(__name__)

# Warnings about individual annotations beyond this many per dataset are only counted.
_MAX_NAMED_WARNINGS = 20


def _gt_min_area():
    try:
        from pydetectron.core.config import cfg
        return cfg.TRAIN.GT_MIN_AREA
    except (ImportError, AttributeError, KeyError):
        return -1


def read_coco_json(ann_fn):
    """The parsed JSON of ``ann_fn``; ``DatasetError`` naming the file when it is not there,
    cannot be read, or is not (complete) JSON."""
    import json
    if not os.path.isfile(ann_fn):
        raise MissingFileError('annotation file %s not found' % ann_fn)
    try:
        with open(ann_fn, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError('cannot read the annotation file %s: %s' % (ann_fn, e.strerror or e))
    if not raw.strip():
        raise DatasetError('%s is empty; expected COCO-format JSON' % ann_fn)
    try:
        return json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
        raise DatasetError('%s is not valid JSON (not UTF-8 text): %s' % (ann_fn, e))
    except ValueError as e:
        hint = ' (truncated?)' if 'Expecting' in str(e) or 'Unterminated' in str(e) else ''
        raise DatasetError('%s is not valid JSON%s: %s' % (ann_fn, hint, e))


def load_coco_json(ann_fn, image_dir=None, image_prefix='', check_images='sample'):
    """Read and check a COCO-format JSON; returns a pycocotools COCO with its index built and
    the ``coco_integrity.IntegrityReport`` as its ``integrity`` attribute.

    The integrity check (``datasets.coco_integrity``) raises ``DatasetError`` for a file that is
    not COCO or whose ids are ambiguous, and removes (naming them in the log, with one summary
    line) the annotations and images that cannot be used, before pycocotools indexes the rest.
    ``check_images`` ('sample', 'all', 'none') compares the image files in ``image_dir`` with the
    JSON's width / height. 'iscrowd' defaults to 0 and 'area' to the box area, with a note.
    """
    data = read_coco_json(ann_fn)
    report = coco_integrity.check_coco_dataset(data, ann_fn, image_dir, image_prefix,
                                               check_images)
    coco_integrity.log_report(report)
    anns = data.get('annotations', [])
    defaulted = 0
    for ann in anns:
        if 'iscrowd' not in ann:
            ann['iscrowd'] = 0
        if 'area' not in ann:
            ann['area'] = float(ann['bbox'][2] * ann['bbox'][3])
            defaulted += 1
    if defaulted:
        logger.info('%s: %d annotations have no area; using their box area', ann_fn, defaulted)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    coco.integrity = report
    return coco


class JsonDataset(object):
    """A COCO-format JSON dataset from the catalog (``dataset_catalog``)."""

    def __init__(self, name, check_images='sample'):
        self.name = dataset_catalog.prepare(name)
        self.image_directory = dataset_catalog.get_im_dir(self.name)
        self.image_prefix = dataset_catalog.get_im_prefix(self.name)
        ann_fn = dataset_catalog.get_ann_fn(self.name)
        if not os.path.isdir(self.image_directory):
            raise MissingFileError("dataset %s: image directory '%s' not found"
                                    % (self.name, self.image_directory))
        if not os.path.isfile(ann_fn):
            raise MissingFileError("dataset %s: annotation file '%s' not found"
                                    % (self.name, ann_fn))
        logger.debug('Creating: %s', self.name)
        self.annotation_file = ann_fn
        self.COCO = load_coco_json(ann_fn, self.image_directory, self.image_prefix,
                                   check_images=check_images)
        self.integrity = self.COCO.integrity
        # Contiguous ids follow the sorted JSON category ids; 0 is the background
        category_ids = sorted(self.COCO.getCatIds())
        categories = [c['name'] for c in self.COCO.loadCats(category_ids)]
        self.category_to_id_map = dict(zip(categories, category_ids))
        self.classes = ['__background__'] + categories
        self.num_classes = len(self.classes)
        self.json_category_id_to_contiguous_id = {v: i + 1 for i, v in enumerate(category_ids)}
        self.contiguous_category_id_to_json_id = {
            v: k for k, v in self.json_category_id_to_contiguous_id.items()}
        self._init_keypoints()
        self._num_warnings = 0

    # ------------------------------------------------------------------------------------------
    def _init_keypoints(self):
        """Keypoint names and flip map from the categories: 'person' if it has keypoints (COCO),
        else the first category that has them. The flip map pairs names that differ by
        left <-> right (COCO's person map exactly)."""
        self.keypoints = None
        self.keypoint_flip_map = None
        self.keypoints_to_id_map = None
        self.num_keypoints = 0
        self.keypoint_category_id = None
        cats = self.COCO.loadCats(sorted(self.COCO.getCatIds()))
        with_kps = [c for c in cats if c.get('keypoints')]
        if not with_kps:
            return
        person = [c for c in with_kps if c['name'] == 'person']
        cat = person[0] if person else with_kps[0]
        others = [c['name'] for c in with_kps if c is not cat and c['keypoints'] != cat['keypoints']]
        if others:
            logger.warning('%s: categories %s define other keypoints than %s; only the keypoints '
                           'of %s are used', self.name, others, cat['name'], cat['name'])
        self.keypoint_category_id = cat['id']
        self.keypoints = list(cat['keypoints'])
        self.keypoints_to_id_map = {k: i for i, k in enumerate(self.keypoints)}
        self.num_keypoints = len(self.keypoints)
        self.keypoint_flip_map = keypoint_utils.keypoint_flip_map_from_names(self.keypoints)

    def _warn(self, msg, *args):
        self._num_warnings += 1
        if self._num_warnings <= _MAX_NAMED_WARNINGS:
            logger.warning('%s: ' + msg, self.name, *args)

    # ------------------------------------------------------------------------------------------
    def get_roidb(self, gt=True, proposal_file=None, min_proposal_size=2, proposal_limit=-1,
                  crowd_filter_thresh=0):
        """The roidb (see the module docstring), optionally with the ground truth (``gt``) and
        proposals from a Detectron proposal pickle: clipped, de-duplicated, boxes with a side
        <= ``min_proposal_size`` removed, the first ``proposal_limit`` kept (all if -1), and
        those that a crowd region covers by more than ``crowd_filter_thresh`` marked -1."""
        if not (gt or crowd_filter_thresh == 0):
            raise ValueError('get_roidb: crowd_filter_thresh must be 0 without ground truth')
        image_ids = sorted(self.COCO.getImgIds())
        roidb = copy.deepcopy(self.COCO.loadImgs(image_ids))
        for entry in roidb:
            self._prep_roidb_entry(entry)
        missing = [e['image'] for e in roidb if not os.path.exists(e['image'])]
        if missing:
            logger.warning('%s: %d of %d image files are missing (e.g. %s)', self.name,
                           len(missing), len(roidb), ', '.join(missing[:3]))
        if gt:
            if 'annotations' not in self.COCO.dataset:
                logger.warning("%s: %s has no 'annotations'; the roidb has no ground truth",
                               self.name, self.annotation_file)
            self._num_warnings = 0
            counts = {'invalid': 0, 'degenerate': 0, 'unknown_category': 0}
            for entry in roidb:
                self._add_gt_annotations(entry, counts)
            if counts['invalid']:
                logger.info('%s: dropped %d annotations with an empty box or zero area',
                            self.name, counts['invalid'])
            if counts['unknown_category']:
                logger.warning('%s: dropped %d annotations whose category_id is not in '
                               "'categories'", self.name, counts['unknown_category'])
            if counts['degenerate']:
                logger.warning('%s: dropped %d degenerate polygons (< 3 points or no area)%s',
                               self.name, counts['degenerate'],
                               '' if self._num_warnings <= _MAX_NAMED_WARNINGS else
                               ' (the first %d named above)' % _MAX_NAMED_WARNINGS)
        if proposal_file is not None:
            self._add_proposals_from_file(roidb, proposal_file, min_proposal_size,
                                          proposal_limit, crowd_filter_thresh)
        _add_class_assignments(roidb)
        return roidb

    def _prep_roidb_entry(self, entry):
        """Empty ground-truth fields and an absolute image path on a JSON image record."""
        entry['dataset'] = self
        entry['image'] = os.path.join(self.image_directory, self.image_prefix + entry['file_name'])
        entry['flipped'] = False
        entry['has_visible_keypoints'] = False
        entry['boxes'] = np.empty((0, 4), dtype=np.float32)
        entry['segms'] = []
        entry['gt_classes'] = np.empty((0,), dtype=np.int32)
        entry['seg_areas'] = np.empty((0,), dtype=np.float32)
        entry['gt_overlaps'] = scipy.sparse.csr_matrix(
            np.empty((0, self.num_classes), dtype=np.float32))
        entry['is_crowd'] = np.empty((0,), dtype=bool)
        entry['box_to_gt_ind_map'] = np.empty((0,), dtype=np.int32)
        if self.keypoints is not None:
            entry['gt_keypoints'] = np.empty((0, 3, self.num_keypoints), dtype=np.int32)
        for k in ('date_captured', 'url', 'license', 'file_name', 'coco_url', 'flickr_url'):
            entry.pop(k, None)

    def _clean_segm(self, obj, counts):
        """The object's segm with degenerate polygons removed; None if nothing usable is left."""
        segm = obj.get('segmentation', [])
        if isinstance(segm, dict):
            if 'counts' not in segm or 'size' not in segm:
                self._warn("annotation %s: RLE segmentation without 'counts'/'size'; dropped",
                           obj['id'])
                return None
            return segm
        if not isinstance(segm, list):
            self._warn('annotation %s: segmentation is neither polygons nor RLE; dropped',
                       obj['id'])
            return None
        if len(segm) == 0:
            return segm  # a box-only annotation
        kept = []
        for poly in segm:
            if segm_utils.is_valid_polygon(poly):
                kept.append(poly)
            else:
                counts['degenerate'] += 1
                self._warn('annotation %s (image %s): dropped a degenerate polygon with %d '
                           'coordinates', obj['id'], obj['image_id'], len(poly))
        if not kept:
            self._warn('annotation %s (image %s): no valid polygon left; annotation dropped',
                       obj['id'], obj['image_id'])
            return None
        return kept

    def _add_gt_annotations(self, entry, counts):
        """Ground-truth boxes, classes, segms, keypoints of one image (Detectron's validity rules:
        drop 'ignore' objects, areas below TRAIN.GT_MIN_AREA, zero areas and boxes that are empty
        after clipping to the image)."""
        objs = self.COCO.imgToAnns.get(entry['id'], [])
        width, height = entry['width'], entry['height']
        gt_min_area = _gt_min_area()
        valid_objs, valid_segms = [], []
        for obj in objs:
            if obj['area'] < gt_min_area or obj.get('ignore', 0) == 1:
                continue
            if obj['category_id'] not in self.json_category_id_to_contiguous_id:
                counts['unknown_category'] += 1
                self._warn('annotation %s (image %s): category_id %s is not one of the '
                           "dataset's categories %s; dropped", obj['id'], entry['id'],
                           obj['category_id'], sorted(self.json_category_id_to_contiguous_id))
                continue
            x1, y1, x2, y2 = box_utils.xywh_to_xyxy(obj['bbox'])
            x1, y1, x2, y2 = box_utils.clip_xyxy_to_image(x1, y1, x2, y2, height, width)
            # non-zero segm area and a box of more than one pixel
            if not (obj['area'] > 0 and x2 > x1 and y2 > y1):
                counts['invalid'] += 1
                continue
            segm = self._clean_segm(obj, counts)
            if segm is None:
                continue
            valid_objs.append((obj, (x1, y1, x2, y2)))
            valid_segms.append(segm)
        n = len(valid_objs)
        boxes = np.zeros((n, 4), dtype=np.float32)
        gt_classes = np.zeros((n,), dtype=np.int32)
        gt_overlaps = np.zeros((n, self.num_classes), dtype=np.float32)
        seg_areas = np.zeros((n,), dtype=np.float32)
        is_crowd = np.zeros((n,), dtype=bool)
        box_to_gt_ind_map = np.arange(n, dtype=np.int32)
        if self.keypoints is not None:
            gt_keypoints = np.zeros((n, 3, self.num_keypoints), dtype=np.int32)
        for ix, (obj, box) in enumerate(valid_objs):
            cls = self.json_category_id_to_contiguous_id[obj['category_id']]
            boxes[ix] = box
            gt_classes[ix] = cls
            seg_areas[ix] = obj['area']
            is_crowd[ix] = bool(obj['iscrowd'])
            if self.keypoints is not None:
                gt_keypoints[ix] = self._get_gt_keypoints(obj, entry['id'])
            # crowd boxes overlap every class by -1 so that they are never sampled
            if obj['iscrowd']:
                gt_overlaps[ix, :] = -1.0
            else:
                gt_overlaps[ix, cls] = 1.0
        entry['boxes'] = np.append(entry['boxes'], boxes, axis=0)
        entry['segms'].extend(valid_segms)
        entry['gt_classes'] = np.append(entry['gt_classes'], gt_classes)
        entry['seg_areas'] = np.append(entry['seg_areas'], seg_areas)
        entry['gt_overlaps'] = scipy.sparse.csr_matrix(
            np.append(entry['gt_overlaps'].toarray(), gt_overlaps, axis=0))
        entry['is_crowd'] = np.append(entry['is_crowd'], is_crowd)
        entry['box_to_gt_ind_map'] = np.append(entry['box_to_gt_ind_map'], box_to_gt_ind_map)
        if self.keypoints is not None:
            entry['gt_keypoints'] = np.append(entry['gt_keypoints'], gt_keypoints, axis=0)
            entry['has_visible_keypoints'] = bool((gt_keypoints[:, 2, :] > 0).any())

    def _get_gt_keypoints(self, obj, image_id=None):
        """(3, K) int32 keypoints of an object; all zeros when it has none (other categories)."""
        kps = obj.get('keypoints')
        if not kps:
            return np.zeros((3, self.num_keypoints), dtype=np.int32)
        if len(kps) != 3 * self.num_keypoints:
            raise DatasetError("%s: annotation %s (image %s): field 'keypoints' has %d values, "
                             'expected 3 x %d (%s)'
                             % (self.annotation_file, obj['id'], image_id, len(kps),
                                self.num_keypoints, ', '.join(self.keypoints)))
        # COCO stores x, y, v interleaved; Detectron keeps integer pixel coordinates
        return np.asarray(kps, dtype=np.float64).reshape(-1, 3).T.astype(np.int32)

    # ------------------------------------------------------------------------------------------
    def _add_proposals_from_file(self, roidb, proposal_file, min_proposal_size, top_k,
                                 crowd_thresh):
        logger.info('Loading proposals from: %s', proposal_file)
        proposals = load_proposals(proposal_file)
        id_field = 'indexes' if 'indexes' in proposals else 'ids'  # older files say 'indexes'
        for field in ('boxes', id_field):
            if field not in proposals:
                raise DatasetError("%s: missing the field '%s'" % (proposal_file, field))
        _sort_proposals(proposals, id_field)
        by_id = {int(i): k for k, i in enumerate(proposals[id_field])}
        box_list = []
        for entry in roidb:
            if entry['id'] not in by_id:
                raise DatasetError('%s: no proposals for image id %s (%s)'
                                 % (proposal_file, entry['id'], entry['image']))
            boxes = np.asarray(proposals['boxes'][by_id[entry['id']]], dtype=np.float32)[:, :4]
            boxes = box_utils.clip_boxes_to_image(boxes, entry['height'], entry['width'])
            boxes = boxes[box_utils.unique_boxes(boxes)]
            boxes = boxes[box_utils.filter_small_boxes(boxes, min_proposal_size)]
            if top_k > 0:
                boxes = boxes[:top_k]
            box_list.append(boxes)
        _merge_proposal_boxes_into_roidb(roidb, box_list)
        if crowd_thresh > 0:
            _filter_crowd_proposals(roidb, crowd_thresh)


def load_proposals(proposal_file):
    """A Detectron proposal pickle: {'boxes': [(N_i, 4) arrays], 'ids' or 'indexes': [...],
    'scores': [...]}; Python 2 pickles are read too."""
    # Allow-listing unpickler: a proposal file from elsewhere must not run code.
    return load_pickle_safe(proposal_file, what='a proposal file')


def add_proposals(roidb, rois, scales, crowd_thresh):
    """Add (K, 5) ``rois`` (batch index, box at the blob scale ``scales[i]``) to an roidb that has
    ground truth but no proposals."""
    box_list = []
    for i in range(len(roidb)):
        idx = np.where(rois[:, 0] == i)[0]
        box_list.append(rois[idx, 1:] / scales[i])
    _merge_proposal_boxes_into_roidb(roidb, box_list)
    if crowd_thresh > 0:
        _filter_crowd_proposals(roidb, crowd_thresh)
    _add_class_assignments(roidb)


def _merge_proposal_boxes_into_roidb(roidb, box_list):
    """Append proposal rows to each entry, labelled by their best-overlapping ground truth."""
    if len(box_list) != len(roidb):
        raise ValueError('proposals for %d images, roidb has %d' % (len(box_list), len(roidb)))
    for entry, boxes in zip(roidb, box_list):
        num_boxes = boxes.shape[0]
        gt_overlaps = np.zeros((num_boxes, entry['gt_overlaps'].shape[1]), dtype=np.float32)
        box_to_gt_ind_map = -np.ones((num_boxes,), dtype=np.int32)
        # Every gt row counts here, crowds included: proposals inside crowds are removed later
        # by _filter_crowd_proposals
        gt_inds = np.where(entry['gt_classes'] > 0)[0]
        if len(gt_inds) > 0:
            gt_boxes = entry['boxes'][gt_inds, :]
            gt_classes = entry['gt_classes'][gt_inds]
            proposal_to_gt_overlaps = box_utils.bbox_overlaps(boxes, gt_boxes)
            argmaxes = proposal_to_gt_overlaps.argmax(axis=1)
            maxes = proposal_to_gt_overlaps.max(axis=1)
            I = np.where(maxes > 0)[0]
            gt_overlaps[I, gt_classes[argmaxes[I]]] = maxes[I]
            box_to_gt_ind_map[I] = gt_inds[argmaxes[I]]
        entry['boxes'] = np.append(entry['boxes'], boxes.astype(np.float32, copy=False), axis=0)
        entry['gt_classes'] = np.append(entry['gt_classes'], np.zeros((num_boxes,), np.int32))
        entry['seg_areas'] = np.append(entry['seg_areas'], np.zeros((num_boxes,), np.float32))
        entry['gt_overlaps'] = scipy.sparse.csr_matrix(
            np.append(entry['gt_overlaps'].toarray(), gt_overlaps, axis=0))
        entry['is_crowd'] = np.append(entry['is_crowd'], np.zeros((num_boxes,), bool))
        entry['box_to_gt_ind_map'] = np.append(entry['box_to_gt_ind_map'], box_to_gt_ind_map)


def _filter_crowd_proposals(roidb, crowd_thresh):
    """Mark proposals that crowd regions cover by more than ``crowd_thresh`` (intersection over
    the proposal's area, COCO's crowd IoU) with overlap -1, so training never samples them."""
    for entry in roidb:
        gt_overlaps = entry['gt_overlaps'].toarray()
        crowd_inds = np.where(entry['is_crowd'])[0]
        non_gt_inds = np.where(entry['gt_classes'] == 0)[0]
        if len(crowd_inds) == 0 or len(non_gt_inds) == 0:
            continue
        crowd_boxes = box_utils.xyxy_to_xywh(entry['boxes'][crowd_inds, :]).astype(np.float64)
        non_gt_boxes = box_utils.xyxy_to_xywh(entry['boxes'][non_gt_inds, :]).astype(np.float64)
        ious = mask_util.iou(non_gt_boxes, crowd_boxes, [1] * len(crowd_inds))
        bad_inds = np.where(ious.max(axis=1) > crowd_thresh)[0]
        gt_overlaps[non_gt_inds[bad_inds], :] = -1
        entry['gt_overlaps'] = scipy.sparse.csr_matrix(gt_overlaps)


def _add_class_assignments(roidb):
    """max_classes / max_overlaps of each row from gt_overlaps."""
    for entry in roidb:
        gt_overlaps = entry['gt_overlaps'].toarray()
        max_overlaps = gt_overlaps.max(axis=1) if gt_overlaps.shape[0] else \
            np.zeros((0,), np.float32)
        max_classes = gt_overlaps.argmax(axis=1) if gt_overlaps.shape[0] else \
            np.zeros((0,), np.int64)
        entry['max_classes'] = max_classes
        entry['max_overlaps'] = max_overlaps
        # an overlap of 0 must mean background, a positive one a foreground class
        assert (max_classes[max_overlaps == 0] == 0).all()
        assert (max_classes[max_overlaps > 0] != 0).all()


def _sort_proposals(proposals, id_field):
    order = np.argsort(np.asarray(proposals[id_field]), kind='stable')
    for k in ('boxes', id_field, 'scores'):
        if k in proposals:
            proposals[k] = [proposals[k][i] for i in order]
