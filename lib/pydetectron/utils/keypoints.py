"""Keypoint utilities (COCO keypoint format).

Ground-truth keypoints live in the roidb as ``gt_keypoints``: an int32 array of shape (G, 3, K)
for G objects and K keypoints, rows (x, y, v) with COCO's visibility flag v: 0 not labeled,
1 labeled but not visible, 2 labeled and visible. COCO's convention is that x = y = 0 when v = 0.

The data part (this section) names keypoints and flips them; the heatmap encoding/decoding used by
Keypoint R-CNN belongs to the model section below it.
"""
import re

import numpy as np

# COCO's 17 person keypoints, in the order of the annotation files.
COCO_PERSON_KEYPOINTS = (
    'nose',
    'left_eye', 'right_eye',
    'left_ear', 'right_ear',
    'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist',
    'left_hip', 'right_hip',
    'left_knee', 'right_knee',
    'left_ankle', 'right_ankle',
)


def get_keypoints():
    """COCO person keypoint names and their left/right flip map.

    Test-split JSONs carry no keypoint names, so Detectron hard-codes them; the flip map holds one
    entry per left/right pair, keyed by the left name.
    """
    keypoints = list(COCO_PERSON_KEYPOINTS)
    return keypoints, keypoint_flip_map_from_names(keypoints)


def get_person_class_index():
    """Contiguous class index of 'person' in COCO (class 0 is background)."""
    return 1


_SIDE = re.compile(r'(^|[_\- ])(left|right)($|[_\- ])', re.IGNORECASE)


def _mirror_name(name):
    """'left_eye' -> 'right_eye', 'eye_left' -> 'eye_right', 'Left' -> 'Right'; else None."""
    m = _SIDE.search(name)
    if m is None:
        return None
    side = m.group(2)
    swap = {'left': 'right', 'right': 'left'}[side.lower()]
    if side[0].isupper():
        swap = swap.capitalize()
    if side.isupper():
        swap = swap.upper()
    return name[:m.start(2)] + swap + name[m.end(2):]


def keypoint_flip_map_from_names(keypoints):
    """Left/right pairs of a keypoint name list, found by swapping the word 'left' and 'right'
    (as a ``_``/``-``/space separated part of the name). Keyed by the left name, like Detectron's
    map; names without a partner (``nose``, ``top``) flip onto themselves and are not listed.
    """
    names = set(keypoints)
    flip_map = {}
    for name in keypoints:
        partner = _mirror_name(name)
        if partner is None or partner not in names:
            continue
        left, right = (name, partner) if 'left' in name.lower() else (partner, name)
        flip_map[left] = right
    return flip_map


def flip_keypoints(keypoints, keypoint_flip_map, keypoint_coords, width):
    """Left/right flip (G, 3, K) ``keypoint_coords`` of an image of ``width`` pixels.

    Left and right keypoints trade places (a flipped left eye is a right eye), x maps to
    ``width - x - 1`` (pixel indices, as boxes), and unlabeled keypoints keep x = 0.
    """
    flipped = keypoint_coords.copy()
    for left, right in keypoint_flip_map.items():
        lid, rid = keypoints.index(left), keypoints.index(right)
        flipped[:, :, lid] = keypoint_coords[:, :, rid]
        flipped[:, :, rid] = keypoint_coords[:, :, lid]
    flipped[:, 0, :] = width - flipped[:, 0, :] - 1
    unlabeled = flipped[:, 2, :] == 0
    flipped[:, 0, :][unlabeled] = 0
    return flipped


def flip_heatmaps(heatmaps, keypoints=None, keypoint_flip_map=None):
    """Flip (N, K, H, W) heatmaps horizontally, swapping left/right channels (test-time flip).
    Defaults to the COCO person keypoints."""
    if keypoints is None:
        keypoints, keypoint_flip_map = get_keypoints()
    flipped = heatmaps.copy()
    for left, right in keypoint_flip_map.items():
        lid, rid = keypoints.index(left), keypoints.index(right)
        flipped[:, rid] = heatmaps[:, lid]
        flipped[:, lid] = heatmaps[:, rid]
    return flipped[:, :, :, ::-1]


# ---------------------------------------------------------------------------------------------
# Keypoint R-CNN heatmap targets and decoding (model section)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------- #
# Test time: heatmaps -> keypoints, OKS and OKS-NMS
# ---------------------------------------------------------------------------------------------- #

def scores_to_probs(scores):
    """Spatial softmax of (K, H, W) scores, channel by channel -> (K, H, W) probabilities.

    Each channel's sum is NumPy's sum of its (H, W) map, as Detectron takes it (pairwise along
    each row). A single (K, H * W) sum along axis 1 is not pairwise there: over a 700 x 700 map
    its float32 sum strays by up to 5e-4 relative.
    """
    scores = np.asarray(scores, dtype=np.float32)
    probs = np.empty(scores.shape, dtype=np.float32)
    for c in range(scores.shape[0]):
        e = np.exp(scores[c] - scores[c].max())
        probs[c] = e / np.sum(e)
    return probs


def heatmap_map_sizes(rois, min_size=0):
    """Detectron's sizes for decoding heatmaps on (R, 4) float32 boxes: the boxes' widths and
    heights (float32, no +1, at least 1) and the resized maps' widths and heights (int64: their
    ceilings, at least ``min_size``, cfg.KRCNN.INFERENCE_MIN_SIZE)."""
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    map_widths = np.maximum(np.ceil(widths), min_size).astype(np.int64)
    map_heights = np.maximum(np.ceil(heights), min_size).astype(np.int64)
    return widths, heights, map_widths, map_heights


def heatmaps_to_keypoints(maps, rois, min_size=0):
    """Keypoint locations from (R, K, H, W) heatmap logits on (R, 4) boxes -> (R, 4, K) float32
    rows x, y, logit, prob (Detectron's layout).

    Each heatmap is resized (bicubic) to the box's size in pixels (at least ``min_size``,
    cfg.KRCNN.INFERENCE_MIN_SIZE; 0 for none) and its arg-max taken. A discrete heatmap cell d
    maps to the continuous coordinate d + 0.5 (Heckbert 1990), the inverse of the training
    targets' floor. Box widths here have no +1: the box spans [x1, x2) continuously.
    """
    import cv2  # bicubic resizing, as Detectron; imported here to keep the data code cv2-free

    maps = np.asarray(maps, dtype=np.float32)
    rois = np.asarray(rois, dtype=np.float32)
    num_keypoints = maps.shape[1]
    offset_x = rois[:, 0]
    offset_y = rois[:, 1]
    widths, heights, map_widths, map_heights = heatmap_map_sizes(rois, min_size)

    maps = np.transpose(maps, [0, 2, 3, 1])  # (R, H, W, K): OpenCV resizes channels-last
    xy_preds = np.zeros((len(rois), 4, num_keypoints), dtype=np.float32)
    for i in range(len(rois)):
        roi_map_width = int(map_widths[i])
        roi_map_height = int(map_heights[i])
        width_correction = widths[i] / roi_map_width
        height_correction = heights[i] / roi_map_height
        roi_map = cv2.resize(maps[i], (roi_map_width, roi_map_height),
                             interpolation=cv2.INTER_CUBIC)
        roi_map = roi_map.reshape(roi_map_height, roi_map_width, num_keypoints)
        roi_map = np.transpose(roi_map, [2, 0, 1])  # back to (K, h, w)
        roi_map_probs = scores_to_probs(roi_map)
        flat_argmax = roi_map.reshape(num_keypoints, -1).argmax(axis=1)  # (K,)
        x_int = flat_argmax % roi_map_width
        y_int = flat_argmax // roi_map_width
        k = np.arange(num_keypoints)
        xy_preds[i, 0] = (x_int + 0.5) * width_correction + offset_x[i]
        xy_preds[i, 1] = (y_int + 0.5) * height_correction + offset_y[i]
        xy_preds[i, 2] = roi_map[k, y_int, x_int]
        xy_preds[i, 3] = roi_map_probs[k, y_int, x_int]
    return xy_preds


# Per-keypoint OKS falloffs of the 17 COCO keypoints (COCO's keypoint sigmas).
COCO_KEYPOINT_SIGMAS = np.array([
    .26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def keypoint_oks_sigmas(num_keypoints):
    """OKS falloffs for ``num_keypoints`` keypoints: COCO's for 17, otherwise COCO's mean sigma
    for every keypoint (COCO defines no others; OKS then weighs all keypoints alike)."""
    if num_keypoints == len(COCO_KEYPOINT_SIGMAS):
        return COCO_KEYPOINT_SIGMAS
    return np.full(num_keypoints, COCO_KEYPOINT_SIGMAS.mean())


def compute_oks(src_keypoints, src_roi, dst_keypoints, dst_roi, sigmas=None):
    """Object keypoint similarity of one (4, K) pose on its (4,) box against (N, 4, K) poses -> (N,).

    As in Detectron, the scale is the area of the source box (+1 convention) and every keypoint
    counts (predictions have no visibility); ``dst_roi`` is unused, kept for Detectron's signature.
    ``sigmas`` (K,) default to ``keypoint_oks_sigmas(K)``.
    """
    if sigmas is None:
        sigmas = keypoint_oks_sigmas(src_keypoints.shape[1])
    variances = (np.asarray(sigmas) * 2) ** 2
    src_area = (src_roi[2] - src_roi[0] + 1) * (src_roi[3] - src_roi[1] + 1)
    dx = dst_keypoints[:, 0, :] - src_keypoints[0, :]
    dy = dst_keypoints[:, 1, :] - src_keypoints[1, :]
    e = (dx ** 2 + dy ** 2) / variances / (src_area + np.spacing(1)) / 2
    return np.sum(np.exp(-e), axis=1) / e.shape[1]


def nms_oks(kp_predictions, rois, thresh, sigmas=None):
    """Greedy NMS of (N, 4, K) poses by OKS (> ``thresh`` suppresses), ranked by mean logit
    -> list of kept indices, best first."""
    scores = np.mean(kp_predictions[:, 2, :], axis=1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        ovr = compute_oks(kp_predictions[i], rois[i], kp_predictions[order[1:]], rois[order[1:]],
                          sigmas)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep
