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
