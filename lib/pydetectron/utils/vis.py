"""Drawing detections: boxes, class names with scores, translucent masks with outlines, and
keypoints with the COCO skeleton; and a precision-recall plot for the evaluation utility.

Detections come in Detectron's per-class layout (``cls_boxes[j]`` (n, 5) arrays of x1, y1, x2, y2,
score; ``cls_segms[j]`` lists of COCO RLEs; ``cls_keyps[j]`` lists of (4, K) arrays of x, y, logit,
prob) or already flattened into one (N, 5) array with parallel lists.
"""
import colorsys
import os

import cv2
import matplotlib
import numpy as np
import pycocotools.mask as mask_util

matplotlib.use('Agg')  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

plt.rcParams['pdf.fonttype'] = 42  # editable text in PDF outputs

_GRAY = (218, 227, 218)
_GREEN = (18, 127, 15)
_WHITE = (255, 255, 255)

# The COCO skeleton as pairs of keypoint names (plus mid-shoulder/mid-hip lines drawn apart).
_KP_LINES = (
    ('left_eye', 'right_eye'), ('left_eye', 'nose'), ('right_eye', 'nose'),
    ('right_eye', 'right_ear'), ('left_eye', 'left_ear'),
    ('right_shoulder', 'right_elbow'), ('right_elbow', 'right_wrist'),
    ('left_shoulder', 'left_elbow'), ('left_elbow', 'left_wrist'),
    ('right_hip', 'right_knee'), ('right_knee', 'right_ankle'),
    ('left_hip', 'left_knee'), ('left_knee', 'left_ankle'),
    ('right_shoulder', 'left_shoulder'), ('right_hip', 'left_hip'),
)

# The 17 COCO keypoints, in dataset order (used when no keypoint list is given).
COCO_KEYPOINTS = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip',
    'left_knee', 'right_knee', 'left_ankle', 'right_ankle')


# COCO's 80 category names in the order of their ids (contiguous classes 1..80), for drawing
# results of COCO models without the annotation file.
COCO_CLASSES = (
    '__background__', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
    'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench',
    'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe',
    'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana',
    'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake',
    'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator',
    'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')


def colormap(n=79, rgb=False):
    """(n, 3) float32 array of well separated colours in 0..255 (BGR unless ``rgb``).

    Hues follow the golden angle so neighbouring instances get distinct colours; saturation and
    value alternate so that hues that come round again stay distinguishable.
    """
    colors = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = (0.95, 0.65, 0.8)[i % 3]
        v = (0.95, 0.75, 0.55)[(i // 3) % 3]
        colors.append(colorsys.hsv_to_rgb(h, s, v))
    colors = np.array(colors, dtype=np.float32) * 255
    return colors if rgb else colors[:, ::-1].copy()


def kp_connections(keypoints):
    """Index pairs of the COCO skeleton lines for the keypoint name list ``keypoints`` (the lines
    whose two ends are both named; none for non-COCO keypoints, which are drawn as points)."""
    return [[keypoints.index(a), keypoints.index(b)] for a, b in _KP_LINES
            if a in keypoints and b in keypoints]


def convert_from_cls_format(cls_boxes, cls_segms, cls_keyps):
    """Flatten per-class results -> (boxes (N, 5) or None, segms list or None, keyps list or None,
    classes list of N class indices)."""
    box_list = [b for b in cls_boxes if len(b) > 0]
    boxes = np.concatenate(box_list) if box_list else None
    segms = [s for slist in cls_segms for s in slist] if cls_segms is not None else None
    keyps = [k for klist in cls_keyps for k in klist] if cls_keyps is not None else None
    classes = []
    for j in range(len(cls_boxes)):
        classes += [j] * len(cls_boxes[j])
    return boxes, segms, keyps, classes


def detections_for_drawing(im, cls_boxes, cls_segms=None, cls_keyps=None, thresh=0.0,
                           max_size=None):
    """(image, cls_boxes, cls_segms, cls_keyps, scale) ready for drawing at a bounded resolution.

    Only detections scoring at least ``thresh`` are kept (nothing else is drawn). When the longest
    side of ``im`` exceeds ``max_size`` (None or 0: no bound) the image is shrunk by ``scale`` so
    that it fits (``cv2.INTER_AREA``), boxes and keypoint coordinates are multiplied by ``scale``
    and each mask is decoded, shrunk and encoded again one at a time -- drawing a 100-megapixel
    photo then costs what drawing a ``max_size`` one does, instead of a full-size matplotlib
    canvas and every mask decoded at full size at once. Detections for files (JSON) should be
    taken from the unscaled results.
    """
    height, width = im.shape[:2]
    scale = 1.0
    if max_size and max(height, width) > max_size:
        scale = float(max_size) / max(height, width)
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
    out_boxes, out_segms, out_keyps = [], [], []
    for j, boxes in enumerate(cls_boxes):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
        keep = np.where(boxes[:, 4] >= thresh)[0]
        b = boxes[keep].copy()
        b[:, :4] *= scale
        out_boxes.append(b)
        if cls_segms is not None:
            segms = [cls_segms[j][i] for i in keep] if len(cls_segms) > j else []
            if scale != 1.0:
                segms = [_shrink_rle(s, im.shape[0], im.shape[1]) for s in segms]
            out_segms.append(segms)
        if cls_keyps is not None:
            kps = [np.array(cls_keyps[j][i], dtype=np.float32, copy=True) for i in keep] \
                if len(cls_keyps) > j else []
            for k in kps:
                k[:2] *= scale
            out_keyps.append(kps)
    return (im, out_boxes, out_segms if cls_segms is not None else None,
            out_keyps if cls_keyps is not None else None, scale)


def _shrink_rle(rle, height, width):
    """A COCO RLE mask resized to (height, width)."""
    mask = mask_util.decode(rle)
    small = cv2.resize(mask * np.uint8(255), (width, height), interpolation=cv2.INTER_AREA)
    return mask_util.encode(np.asfortranarray((small >= 128).astype(np.uint8)))


def get_class_string(class_index, score, dataset=None):
    """'person 0.97': the class name from ``dataset.classes`` (or 'id<j>') and the score."""
    if dataset is not None:
        classes = dataset.classes if hasattr(dataset, 'classes') else dataset
        class_text = classes[class_index]
    else:
        class_text = 'id{:d}'.format(class_index)
    return '{} {:0.2f}'.format(class_text, score)


def _find_contours(mask):
    # OpenCV 3 returns (image, contours, hierarchy); OpenCV 4+ returns (contours, hierarchy).
    out = cv2.findContours(mask.copy(), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return out[-2]


def vis_mask(img, mask, col, alpha=0.4, show_border=True, border_thick=1):
    """Blend colour ``col`` into ``img`` (H, W, 3 uint8) where the (H, W) binary ``mask`` is set."""
    img = img.astype(np.float32)
    idx = np.nonzero(mask)
    img[idx[0], idx[1], :] *= 1.0 - alpha
    img[idx[0], idx[1], :] += alpha * np.asarray(col, dtype=np.float32)
    if show_border:
        contours = _find_contours(mask.astype(np.uint8))
        cv2.drawContours(img, contours, -1, _WHITE, border_thick, cv2.LINE_AA)
    return img.astype(np.uint8)


def vis_class(img, pos, class_str, font_scale=0.35):
    """Write ``class_str`` on a filled label whose bottom-left corner is ``pos``."""
    x0, y0 = int(pos[0]), int(pos[1])
    font = cv2.FONT_HERSHEY_SIMPLEX
    ((txt_w, txt_h), _) = cv2.getTextSize(class_str, font, font_scale, 1)
    cv2.rectangle(img, (x0, y0 - int(1.3 * txt_h)), (x0 + txt_w, y0), _GREEN, -1)
    cv2.putText(img, class_str, (x0, y0 - int(0.3 * txt_h)), font, font_scale, _GRAY,
                lineType=cv2.LINE_AA)
    return img


def vis_bbox(img, bbox, thick=1):
    """Draw an (x, y, w, h) box."""
    x0, y0, w, h = bbox
    x1, y1 = int(x0 + w), int(y0 + h)
    cv2.rectangle(img, (int(x0), int(y0)), (x1, y1), _GREEN, thickness=thick)
    return img


def _skeleton_colors(n_lines, bgr255=False):
    cmap = plt.get_cmap('rainbow')
    colors = [cmap(i) for i in np.linspace(0, 1, n_lines + 2)]
    if bgr255:
        return [(c[2] * 255, c[1] * 255, c[0] * 255) for c in colors]
    return colors


def _mid_points(kps, keypoints):
    """Mid-shoulder and mid-hip points with the lower of their two logits as their score (scores
    of -inf when the keypoints are not COCO's)."""
    needed = ('right_shoulder', 'left_shoulder', 'right_hip', 'left_hip')
    if not all(n in keypoints for n in needed):
        return np.zeros(2), -np.inf, np.zeros(2), -np.inf
    rs, ls = keypoints.index('right_shoulder'), keypoints.index('left_shoulder')
    rh, lh = keypoints.index('right_hip'), keypoints.index('left_hip')
    mid_shoulder = (kps[:2, rs] + kps[:2, ls]) / 2.0
    sc_mid_shoulder = min(kps[2, rs], kps[2, ls])
    mid_hip = (kps[:2, rh] + kps[:2, lh]) / 2.0
    sc_mid_hip = min(kps[2, rh], kps[2, lh])
    return mid_shoulder, sc_mid_shoulder, mid_hip, sc_mid_hip


def _keypoint_names(names, num_keypoints):
    """``names`` when they name ``num_keypoints`` keypoints, else anonymous ones (points only)."""
    names = list(names) if names is not None else []
    if len(names) != num_keypoints:
        return ['kp%d' % k for k in range(num_keypoints)]
    return names


def vis_keypoints(img, kps, kp_thresh=2, alpha=0.7, keypoints=COCO_KEYPOINTS):
    """Draw one (4, K) pose (x, y, logit, prob) with its skeleton; points with logit <= kp_thresh
    are left out."""
    keypoints = _keypoint_names(keypoints, kps.shape[1])
    kp_lines = kp_connections(keypoints)
    colors = _skeleton_colors(len(kp_lines), bgr255=True)
    kp_mask = np.copy(img)  # drawn on a copy, then blended

    def pt(p):
        return int(round(float(p[0]))), int(round(float(p[1])))

    mid_shoulder, sc_mid_shoulder, mid_hip, sc_mid_hip = _mid_points(kps, keypoints)
    nose = keypoints.index('nose') if 'nose' in keypoints else None
    if nose is not None and sc_mid_shoulder > kp_thresh and kps[2, nose] > kp_thresh:
        cv2.line(kp_mask, pt(mid_shoulder), pt(kps[:2, nose]), color=colors[len(kp_lines)],
                 thickness=2, lineType=cv2.LINE_AA)
    if sc_mid_shoulder > kp_thresh and sc_mid_hip > kp_thresh:
        cv2.line(kp_mask, pt(mid_shoulder), pt(mid_hip), color=colors[len(kp_lines) + 1],
                 thickness=2, lineType=cv2.LINE_AA)
    for l, (i1, i2) in enumerate(kp_lines):
        p1, p2 = pt(kps[:2, i1]), pt(kps[:2, i2])
        if kps[2, i1] > kp_thresh and kps[2, i2] > kp_thresh:
            cv2.line(kp_mask, p1, p2, color=colors[l], thickness=2, lineType=cv2.LINE_AA)
    point_colors = _skeleton_colors(kps.shape[1], bgr255=True)
    for k in range(kps.shape[1]):  # every keypoint, on a skeleton line or not
        if kps[2, k] > kp_thresh:
            cv2.circle(kp_mask, pt(kps[:2, k]), radius=3, color=point_colors[k], thickness=-1,
                       lineType=cv2.LINE_AA)
    return cv2.addWeighted(img, 1.0 - alpha, kp_mask, alpha, 0)


def vis_one_image_opencv(im, boxes, segms=None, keypoints=None, thresh=0.9, kp_thresh=2,
                         show_box=True, dataset=None, show_class=False,
                         keypoint_names=COCO_KEYPOINTS):
    """Draw the detections on a copy of the BGR image ``im`` -> (H, W, 3) uint8 BGR."""
    classes = None
    if isinstance(boxes, list):
        boxes, segms, keypoints, classes = convert_from_cls_format(boxes, segms, keypoints)
    im = np.array(im)
    if boxes is None or boxes.shape[0] == 0 or max(boxes[:, 4]) < thresh:
        return im
    masks = mask_util.decode(segms) if segms else None
    color_list = colormap()
    mask_color_id = 0
    # Largest first so that small objects stay visible on top.
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-areas):
        bbox, score = boxes[i, :4], boxes[i, -1]
        if score < thresh:
            continue
        if show_box:
            im = vis_bbox(im, (bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]))
        if show_class and classes is not None:
            im = vis_class(im, (bbox[0], bbox[1] - 2), get_class_string(classes[i], score, dataset))
        if masks is not None and len(segms) > i:
            im = vis_mask(im, masks[..., i], color_list[mask_color_id % len(color_list), 0:3])
            mask_color_id += 1
        if keypoints is not None and len(keypoints) > i:
            im = vis_keypoints(im, keypoints[i], kp_thresh, keypoints=keypoint_names)
    return im


def vis_one_image(im, im_name, output_dir, boxes, segms=None, keypoints=None, thresh=0.9,
                  kp_thresh=2, dpi=200, box_alpha=0.0, dataset=None, show_class=False,
                  ext='pdf', out_when_no_box=False, keypoint_names=COCO_KEYPOINTS):
    """Draw the detections on the RGB image ``im`` with matplotlib and save
    ``<output_dir>/<basename(im_name)>.<ext>`` (ext: 'pdf', 'png', 'jpg', ...).

    Returns the path written, or None when nothing scored ``thresh`` and ``out_when_no_box`` is
    False (Detectron's behaviour; infer_simple sets it so every input gives an output).
    """
    os.makedirs(output_dir, exist_ok=True)
    classes = None
    if isinstance(boxes, list):
        boxes, segms, keypoints, classes = convert_from_cls_format(boxes, segms, keypoints)
    nothing = boxes is None or boxes.shape[0] == 0 or max(boxes[:, 4]) < thresh
    if nothing and not out_when_no_box:
        return None

    if keypoints is not None and len(keypoints) > 0:
        keypoint_names = _keypoint_names(keypoint_names, np.asarray(keypoints[0]).shape[1])
    keypoint_names = list(keypoint_names)
    kp_lines = kp_connections(keypoint_names)
    kp_colors = _skeleton_colors(len(kp_lines))
    color_list = colormap(rgb=True) / 255
    masks = mask_util.decode(segms) if segms else None

    fig = plt.figure(frameon=False)
    fig.set_size_inches(im.shape[1] / dpi, im.shape[0] / dpi)
    ax = plt.Axes(fig, [0., 0., 1., 1.])
    ax.axis('off')
    fig.add_axes(ax)
    ax.imshow(im)

    if not nothing:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        mask_color_id = 0
        for i in np.argsort(-areas):  # largest first to reduce occlusion
            bbox, score = boxes[i, :4], boxes[i, -1]
            if score < thresh:
                continue
            ax.add_patch(plt.Rectangle((bbox[0], bbox[1]), bbox[2] - bbox[0], bbox[3] - bbox[1],
                                       fill=False, edgecolor='g', linewidth=0.5, alpha=box_alpha))
            if show_class and classes is not None:
                ax.text(bbox[0], bbox[1] - 2, get_class_string(classes[i], score, dataset),
                        fontsize=3, family='serif',
                        bbox=dict(facecolor='g', alpha=0.4, pad=0, edgecolor='none'),
                        color='white')
            if masks is not None and len(segms) > i:
                color_mask = color_list[mask_color_id % len(color_list), 0:3].copy()
                mask_color_id += 1
                w_ratio = .4  # lighten the colour towards white
                color_mask = color_mask * (1 - w_ratio) + w_ratio
                for c in _find_contours(masks[:, :, i]):
                    ax.add_patch(Polygon(c.reshape((-1, 2)), fill=True, facecolor=color_mask,
                                         edgecolor='w', linewidth=1.2, alpha=0.5))
            if keypoints is not None and len(keypoints) > i:
                _plot_keypoints(ax, keypoints[i], kp_lines, kp_colors, kp_thresh, keypoint_names)

    out_path = os.path.join(output_dir, '{}.{}'.format(os.path.basename(im_name), ext))
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def _plot_keypoints(ax, kps, kp_lines, colors, kp_thresh, keypoint_names):
    ax.set_autoscale_on(False)
    for l, (i1, i2) in enumerate(kp_lines):
        if kps[2, i1] > kp_thresh and kps[2, i2] > kp_thresh:
            ax.plot([kps[0, i1], kps[0, i2]], [kps[1, i1], kps[1, i2]], color=colors[l],
                    linewidth=1.0, alpha=0.7)
    point_colors = _skeleton_colors(kps.shape[1])
    for k in range(kps.shape[1]):
        if kps[2, k] > kp_thresh:
            ax.plot(kps[0, k], kps[1, k], '.', color=point_colors[k], markersize=3.0, alpha=0.7)
    mid_shoulder, sc_mid_shoulder, mid_hip, sc_mid_hip = _mid_points(kps, keypoint_names)
    nose = keypoint_names.index('nose') if 'nose' in keypoint_names else None
    if nose is not None and sc_mid_shoulder > kp_thresh and kps[2, nose] > kp_thresh:
        ax.plot([mid_shoulder[0], kps[0, nose]], [mid_shoulder[1], kps[1, nose]],
                color=colors[len(kp_lines)], linewidth=1.0, alpha=0.7)
    if sc_mid_shoulder > kp_thresh and sc_mid_hip > kp_thresh:
        ax.plot([mid_shoulder[0], mid_hip[0]], [mid_shoulder[1], mid_hip[1]],
                color=colors[len(kp_lines) + 1], linewidth=1.0, alpha=0.7)


def vis_precision_recall(curves, out_path, title=None, dpi=120):
    """Plot precision-recall curves and save them (PNG, PDF, ... by extension).

    ``curves`` is a list of (label, recall (R,), precision (R,)); returns ``out_path``.
    """
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, recall, precision in curves:
        ax.plot(recall, precision, linewidth=1.2, label=label)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc='lower left', fontsize=7)
    d = os.path.dirname(out_path)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(out_path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)
    return out_path


def detections_to_dicts(cls_boxes, cls_segms=None, cls_keyps=None, classes=None, thresh=0.0):
    """Per-class results -> JSON-ready dicts of the detections scoring at least ``thresh``, best
    first: {'class_id', 'class_name', 'score', 'bbox': [x1, y1, x2, y2] (inclusive corners),
    'segmentation': RLE with text counts (with masks), 'keypoints': [[x, y, logit], ...]}."""
    boxes, segms, keyps, class_ids = convert_from_cls_format(cls_boxes, cls_segms, cls_keyps)
    if boxes is None:
        return []
    out = []
    for i in np.argsort(-boxes[:, 4], kind='stable'):
        score = float(boxes[i, 4])
        if score < thresh:
            continue
        j = int(class_ids[i])
        det = {'class_id': j, 'class_name': classes[j] if classes is not None else 'id%d' % j,
               'score': score, 'bbox': [float(v) for v in boxes[i, :4]]}
        if segms is not None and len(segms) > i:
            counts = segms[i]['counts']
            det['segmentation'] = {'size': [int(v) for v in segms[i]['size']],
                                   'counts': counts.decode('ascii')
                                   if isinstance(counts, bytes) else counts}
        if keyps is not None and len(keyps) > i:
            k = np.asarray(keyps[i])
            det['keypoints'] = [[float(k[0, n]), float(k[1, n]), float(k[2, n])]
                                for n in range(k.shape[1])]
        out.append(det)
    return out
