"""One training image: read, flip, aspect-crop, scale, and its ground truth at the blob scale.

``get_minibatch_entry(entry, target_size, max_size, pixel_means, crop_ratio, rng)`` returns the
image as an (h, w, 3) float32 array (BGR minus ``pixel_means``, resized so its short side is
``target_size`` unless the long side would exceed ``max_size``), its ``im_scale`` and the
ground-truth dict of ``roi_data.loader``'s output, as numpy arrays.

Order of operations, as Detectron's: the image is read (BGR) and mirrored if the roidb entry is a
flipped copy (its boxes/segms/keypoints were flipped when the roidb was built); an entry marked
``need_crop`` (TRAIN.ASPECT_CROPPING) is cropped to the aspect ratio ``crop_ratio`` in original
pixels — image, boxes, polygons, RLE masks and keypoints with the same window — and then the
scale is chosen for the cropped image, so its short side still reaches ``target_size``. Finally
every coordinate is multiplied by ``im_scale``; the ground truth also travels at the original
scale (``boxes_orig``, ``segms_orig``, ``gt_keypoints_orig``: the roidb's own values), because
Detectron computes the Fast R-CNN box targets, the mask targets and the keypoint targets there.
"""
import math

import cv2
import numpy as np
import pycocotools.mask as mask_util

from pydetectron.utils import blob as blob_utils
from pydetectron.utils import segms as segm_utils
from pydetectron.utils.errors import ImageError
from pydetectron.utils.image_io import read_image


class ImageLoadError(ImageError):
    """An image file is missing, truncated, cannot be decoded or disagrees with its annotation."""


def load_image(entry):
    """The entry's image as BGR uint8 (H, W, 3) in stored orientation (``utils.image_io``),
    mirrored when the entry is flipped."""
    im = read_image(entry['image'], expected_size=(entry['height'], entry['width']),
                    what='image id %s' % entry.get('id'), error_type=ImageLoadError)
    if entry['flipped']:
        im = cv2.flip(im, 1)  # a contiguous copy: later cv2 calls are much faster on it
    return im


def _num_gt(entry):
    """Ground-truth rows come first in an roidb entry; proposals (gt_classes 0) follow."""
    return len(entry['segms'])


def choose_crop_window(entry, crop_ratio, rng):
    """Window (x0, y0, crop_w, crop_h) in original pixels with width / height ~ ``crop_ratio``,
    cropping the long side only.

    The window keeps all (non-crowd) ground-truth boxes when they fit, choosing uniformly among
    such positions; when they do not fit it lies within their extent, uniformly.
    """
    width, height = entry['width'], entry['height']
    if width / float(height) > crop_ratio:  # too wide: crop x
        axis, size, crop = 0, width, min(width, int(math.ceil(height * crop_ratio)))
    else:  # too tall: crop y
        axis, size, crop = 1, height, min(height, int(math.ceil(width / crop_ratio)))
    num_gt = _num_gt(entry)
    gt_boxes = entry['boxes'][:num_gt]
    non_crowd = ~entry['is_crowd'][:num_gt]
    if non_crowd.any():
        gt_boxes = gt_boxes[non_crowd]
    if len(gt_boxes) == 0:
        lo, hi = 0, size - crop
    else:
        first = int(math.floor(gt_boxes[:, axis].min()))
        last = int(math.floor(gt_boxes[:, axis + 2].max()))
        if last - first + 1 <= crop:  # the boxes fit: any window containing them
            lo, hi = max(0, last - crop + 1), min(first, size - crop)
        else:  # they do not: a window inside their extent
            lo, hi = first, last - crop + 1
        lo, hi = min(max(lo, 0), size - crop), min(max(hi, 0), size - crop)
    start = int(rng.randint(lo, hi + 1)) if hi > lo else int(lo)
    if axis == 0:
        return start, 0, crop, height
    return 0, start, width, crop


def crop_entry(entry, x0, y0, crop_w, crop_h):
    """The roidb entry seen through the window [x0, x0 + crop_w) x [y0, y0 + crop_h).

    Boxes are shifted and clipped; rows whose box leaves the window (or becomes empty, Detectron's
    x2 > x1 and y2 > y1 rule) are removed, as are objects whose polygons fall outside it.
    Keypoints outside the window become unlabeled (v = 0, x = y = 0); ``box_to_gt_ind_map`` is
    renumbered for the remaining ground truth (-1 for proposals whose box was removed).
    """
    boxes = entry['boxes'].astype(np.float32, copy=True)
    num_gt = _num_gt(entry)
    boxes[:, 0::2] -= x0
    boxes[:, 1::2] -= y0
    inside = ((boxes[:, 2] >= 0) & (boxes[:, 0] <= crop_w - 1) &
              (boxes[:, 3] >= 0) & (boxes[:, 1] <= crop_h - 1))
    np.clip(boxes[:, 0::2], 0, crop_w - 1, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, crop_h - 1, out=boxes[:, 1::2])
    keep = inside & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

    segms = segm_utils.crop_segms(entry['segms'], x0, y0, crop_w, crop_h,
                                  entry['height'], entry['width'])
    seg_areas = entry['seg_areas'].astype(np.float32, copy=True)
    for i, (old, new) in enumerate(zip(entry['segms'], segms)):
        if segm_utils.is_poly(new):
            if len(old) > 0 and len(new) == 0:
                keep[i] = False
            elif len(new) > 0:
                seg_areas[i] = sum(segm_utils.polygon_area(p) for p in new)
        else:
            seg_areas[i] = float(mask_util.area(new))
            if seg_areas[i] == 0:
                keep[i] = False

    keep_inds = np.where(keep)[0]
    keep_gt = keep[:num_gt]
    # old ground-truth index -> new one (-1 when removed)
    gt_renumber = np.full((num_gt + 1,), -1, dtype=np.int64)
    gt_renumber[:num_gt][keep_gt] = np.arange(int(keep_gt.sum()))
    old_map = entry['box_to_gt_ind_map'].astype(np.int64)
    new_map = gt_renumber[np.where(old_map >= 0, old_map, num_gt)]

    out = {k: v for k, v in entry.items()}
    out['boxes'] = boxes[keep_inds]
    out['segms'] = [segms[i] for i in np.where(keep_gt)[0]]
    out['seg_areas'] = seg_areas[keep_inds]
    out['box_to_gt_ind_map'] = new_map[keep_inds].astype(np.int32)
    for key in ('gt_classes', 'is_crowd', 'max_classes', 'max_overlaps', 'bbox_targets'):
        if key in entry:
            out[key] = entry[key][keep_inds]
    if 'gt_overlaps' in entry:
        out['gt_overlaps'] = entry['gt_overlaps'][keep_inds]
    if 'gt_keypoints' in entry:
        kps = entry['gt_keypoints'][np.where(keep_gt)[0]].copy()
        kps[:, 0, :] -= x0
        kps[:, 1, :] -= y0
        outside = ((kps[:, 0, :] < 0) | (kps[:, 0, :] >= crop_w) |
                   (kps[:, 1, :] < 0) | (kps[:, 1, :] >= crop_h))
        unlabeled = outside | (kps[:, 2, :] == 0)
        for row in range(3):
            kps[:, row, :][unlabeled] = 0
        out['gt_keypoints'] = kps
        out['has_visible_keypoints'] = bool((kps[:, 2, :] > 0).any())
    out['width'], out['height'] = int(crop_w), int(crop_h)
    out['crop_box'] = (int(x0), int(y0), int(x0 + crop_w - 1), int(y0 + crop_h - 1))
    return out


def scale_entry(entry, im_scale):
    """The ground truth the model needs, in blob coordinates (numpy; the loader makes tensors).

    R = roidb rows (G ground truth first, then proposals), K keypoints:
        boxes (R, 4) float32, gt_boxes (G, 4) float32, gt_classes (R,) int64, is_crowd (R,) bool,
        box_to_gt_ind_map (R,) int64, max_classes (R,) int64, max_overlaps (R,) float32,
        bbox_targets (R, 5) float32, seg_areas (R,) float32,
        segms: G items, a list of (2P,) float32 polygon arrays or a compressed RLE dict at the
        scaled image size, gt_keypoints (G, 3, K) float32 (keypoint datasets),
        plus id, image, flipped, has_visible_keypoints, crop_box (original pixels or None);
    and the same ground truth at the original (cropped) image scale, as Detectron's roidb holds
    it, for the targets Detectron computes there:
        boxes_orig (R, 4) float32, segms_orig (G items: (2P,) float32 polygon arrays, or the
        roidb's RLE dict), gt_keypoints_orig (G, 3, K) float32 (keypoint datasets).
    """
    num_gt = _num_gt(entry)
    s = np.float32(im_scale)
    boxes_orig = entry['boxes'].astype(np.float32)
    boxes = boxes_orig * s
    gt = {
        'boxes': boxes,
        'boxes_orig': boxes_orig,
        'gt_boxes': boxes[:num_gt],
        'gt_classes': entry['gt_classes'].astype(np.int64),
        'is_crowd': entry['is_crowd'].astype(bool),
        'box_to_gt_ind_map': entry['box_to_gt_ind_map'].astype(np.int64),
        'max_classes': np.asarray(entry['max_classes']).astype(np.int64),
        'max_overlaps': np.asarray(entry['max_overlaps']).astype(np.float32),
        'seg_areas': entry['seg_areas'].astype(np.float32) * s * s,
        'segms': segm_utils.scale_segms(entry['segms'], im_scale, entry['height'], entry['width']),
        # Detectron's polys_to_mask_wrt_box takes np.array(poly, dtype=np.float32)
        'segms_orig': [segm if isinstance(segm, dict) else
                       [np.asarray(p, dtype=np.float32).reshape(-1) for p in segm]
                       for segm in entry['segms']],
        'id': entry['id'],
        'image': entry['image'],
        'flipped': bool(entry['flipped']),
        'has_visible_keypoints': bool(entry.get('has_visible_keypoints', False)),
        'crop_box': entry.get('crop_box'),
    }
    if 'bbox_targets' in entry:
        gt['bbox_targets'] = entry['bbox_targets'].astype(np.float32)
    if 'gt_keypoints' in entry:
        kps_orig = entry['gt_keypoints'].astype(np.float32)
        kps = kps_orig.copy()
        kps[:, 0:2, :] *= s
        gt['gt_keypoints'] = kps
        gt['gt_keypoints_orig'] = kps_orig
    return gt


def get_minibatch_entry(entry, target_size, max_size, pixel_means, crop_ratio=None, rng=None):
    """(im, im_scale, gt) for one roidb entry; see the module docstring.

    ``crop_ratio``: the aspect ratio to crop a ``need_crop`` entry to (ignored otherwise);
    ``rng``: a numpy RandomState choosing the crop window.
    """
    im = load_image(entry)
    if crop_ratio is not None and entry.get('need_crop', False):
        x0, y0, crop_w, crop_h = choose_crop_window(entry, crop_ratio, rng or np.random)
        im = im[y0:y0 + crop_h, x0:x0 + crop_w]
        entry = crop_entry(entry, x0, y0, crop_w, crop_h)
    im, im_scale = blob_utils.prep_im_for_blob(im, pixel_means, target_size, max_size)
    return im, im_scale, scale_entry(entry, im_scale)
