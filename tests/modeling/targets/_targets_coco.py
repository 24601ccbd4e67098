"""Real coco_mini ground truth in the loader's per-image format, for the target tests.

``blob_entry`` scales one roidb entry (Detectron's ``JsonDataset`` roidb, original image scale) to
a blob of scale ``im_scale`` exactly as the loader documents it (``roi_data/loader.py``): boxes,
polygons and keypoint coordinates times ``im_scale`` as float32, and (``orig=True``) the roidb's
own values beside them (``boxes_orig``, ``segms_orig``, ``gt_keypoints_orig``).
"""
import os

import numpy as np
import torch

_ROIDB_CACHE = {}


def load_roidb(coco_mini, ann='instances_train2017.json'):
    from pydetectron.datasets.json_dataset import JsonDataset
    key = (coco_mini, ann)
    if key not in _ROIDB_CACHE:
        spec = 'coco_json:%s:%s' % (os.path.join(coco_mini, 'annotations', ann),
                                    os.path.join(coco_mini, 'images', 'train2017'))
        _ROIDB_CACHE[key] = JsonDataset(spec).get_roidb()
    return _ROIDB_CACHE[key]


def blob_entry(entry, im_scale, orig=True):
    """(loader-style gt dict in blob scale, im_info row (height, width, im_scale))."""
    s = np.float32(im_scale)
    gt = np.where(entry['gt_classes'] > 0)[0]
    out = {
        'boxes': torch.from_numpy(entry['boxes'][gt].astype(np.float32) * s),
        'gt_classes': torch.from_numpy(entry['gt_classes'][gt].astype(np.int64)),
        'is_crowd': torch.from_numpy(entry['is_crowd'][gt].astype(bool)),
        'segms': [segm if isinstance(segm, dict) else
                  [np.asarray(p, dtype=np.float32) * s for p in segm]
                  for segm in (entry['segms'][i] for i in gt)],
    }
    if 'gt_keypoints' in entry:
        kp = entry['gt_keypoints'][gt].astype(np.float32)
        kp[:, :2, :] *= s
        out['gt_keypoints'] = torch.from_numpy(kp)
    if orig:
        out['boxes_orig'] = torch.from_numpy(entry['boxes'][gt].astype(np.float32))
        out['segms_orig'] = [segm if isinstance(segm, dict) else
                             [np.asarray(p, dtype=np.float32) for p in segm]
                             for segm in (entry['segms'][i] for i in gt)]
        if 'gt_keypoints' in entry:
            out['gt_keypoints_orig'] = torch.from_numpy(
                entry['gt_keypoints'][gt].astype(np.float32))
    im_info = [np.round(entry['height'] * im_scale), np.round(entry['width'] * im_scale), im_scale]
    return out, im_info


def pick_entries(roidb, n, min_gt=2, need_crowd=False, need_keypoints=False):
    """The first n entries with at least min_gt non-crowd objects (and a crowd region if asked)."""
    out = []
    for e in roidb:
        nc = int(((e['gt_classes'] > 0) & ~e['is_crowd']).sum())
        if nc < min_gt or (need_crowd and not e['is_crowd'].any()):
            continue
        if need_keypoints and not (e['gt_keypoints'][:, 2, :] > 0).any():
            continue
        out.append(e)
        if len(out) == n:
            break
    return out


def batch(entries, scales, orig=True):
    """Loader-style (roidb list, im_info (N, 3) float32 tensor) for entries at the given scales."""
    roidb, info = [], []
    for e, s in zip(entries, scales):
        d, i = blob_entry(e, s, orig)
        roidb.append(d)
        info.append(i)
    return roidb, torch.tensor(info, dtype=torch.float32)


def jittered_proposals(roidb, im_info, per_gt=12, n_random=60, seed=0):
    """(R, 5) float32 proposals in blob scale: gt boxes jittered (fg-like) plus random boxes."""
    rng = np.random.RandomState(seed)
    rows = []
    for i, (d, info) in enumerate(zip(roidb, im_info.numpy())):
        h, w = info[0], info[1]
        boxes = d['boxes'].numpy()
        for b in boxes:
            bw, bh = b[2] - b[0] + 1, b[3] - b[1] + 1
            d_xy = rng.uniform(-0.3, 0.3, size=(per_gt, 4)) * np.array([bw, bh, bw, bh])
            rows.append(np.hstack([np.full((per_gt, 1), i), b[None] + d_xy]))
        x1 = rng.uniform(0, w - 10, n_random)
        y1 = rng.uniform(0, h - 10, n_random)
        x2 = np.minimum(w - 1, x1 + rng.uniform(8, w / 2, n_random))
        y2 = np.minimum(h - 1, y1 + rng.uniform(8, h / 2, n_random))
        rows.append(np.stack([np.full(n_random, i), x1, y1, x2, y2], axis=1))
    r = np.concatenate(rows).astype(np.float32)
    r[:, 1:] = np.maximum(r[:, 1:], 0)
    r[:, 3] = np.maximum(r[:, 3], r[:, 1])
    r[:, 4] = np.maximum(r[:, 4], r[:, 2])
    return torch.from_numpy(r)


def detectron_inv_scale(im_scale):
    """Detectron's ``inv_im_scale = 1. / scales[i]`` for the float32 im_info scale, as the float32
    factor numpy (1.x) multiplies its float32 rois by."""
    return np.float32(1. / np.float64(np.float32(im_scale)))


def detectron_candidate_boxes(entries, scales, rois, G):
    """(N * G + R, 4) float32: the candidates of ``label_proposals`` at the original scale as
    Detectron's roidb has them -- image n's gt boxes (the roidb's own, zero padding to G rows),
    then the proposals ``rois`` (R, 5) times ``1 / im_scale`` (``add_proposals``)."""
    rows = []
    for e, s in zip(entries, scales):
        g = e['boxes'][e['gt_classes'] > 0].astype(np.float32)
        rows.append(np.vstack([g, np.zeros((G - len(g), 4), np.float32)]))
    r = rois.numpy()
    inv = np.array([detectron_inv_scale(scales[int(b)]) for b in r[:, 0]], np.float32)
    rows.append(r[:, 1:5] * inv[:, None])
    return np.vstack(rows).astype(np.float32)
