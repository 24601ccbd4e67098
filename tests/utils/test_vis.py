"""Drawing detections: formats, colours and the files written."""
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.utils import vis


def _results(h=120, w=160):
    """Two classes: a person with a mask and a pose, a low-scoring 'bicycle'."""
    cls_boxes = [[], np.array([[20, 10, 99, 109, 0.95]], np.float32),
                 np.array([[5, 5, 30, 30, 0.2]], np.float32)]
    m = np.zeros((h, w), np.uint8)
    m[30:90, 40:80] = 1
    m2 = np.zeros((h, w), np.uint8)
    m2[5:30, 5:30] = 1
    cls_segms = [[], [mask_util.encode(np.asfortranarray(m))],
                 [mask_util.encode(np.asfortranarray(m2))]]
    kps = np.zeros((4, 17), np.float32)
    kps[0] = np.linspace(30, 90, 17)
    kps[1] = np.linspace(15, 105, 17)
    kps[2] = 5.0  # logits above kp_thresh
    cls_keyps = [[], [kps], [np.zeros((4, 17), np.float32)]]
    return cls_boxes, cls_segms, cls_keyps, m


def test_convert_from_cls_format_and_class_string():
    cls_boxes, cls_segms, cls_keyps, _ = _results()
    boxes, segms, keyps, classes = vis.convert_from_cls_format(cls_boxes, cls_segms, cls_keyps)
    assert boxes.shape == (2, 5) and classes == [1, 2] and len(segms) == 2 and len(keyps) == 2
    assert vis.get_class_string(1, 0.9734, vis.COCO_CLASSES) == 'person 0.97'
    assert vis.get_class_string(3, 0.5, None) == 'id3 0.50'
    assert len(vis.COCO_CLASSES) == 81 and vis.COCO_CLASSES[80] == 'toothbrush'


def test_kp_connections_follow_names():
    lines = vis.kp_connections(list(vis.COCO_KEYPOINTS))
    assert len(lines) == 15
    assert lines[0] == [1, 2]  # left_eye - right_eye
    assert [5, 6] in [sorted(l) for l in lines]  # the shoulders


def test_vis_mask_blends_colour_and_draws_border():
    img = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    out = vis.vis_mask(img, mask, np.array([200., 0., 0.]), alpha=0.5, show_border=True)
    # inside (away from the border): 100 * 0.5 + 0.5 * colour
    assert tuple(out[20, 20]) == (150, 50, 50)
    assert tuple(out[0, 0]) == (100, 100, 100)
    assert (out[10, 10:30] > 150).any()  # the white outline
    no_border = vis.vis_mask(img, mask, np.array([200., 0., 0.]), alpha=0.5, show_border=False)
    assert tuple(no_border[10, 20]) == (150, 50, 50)


def test_vis_one_image_opencv_draws_only_above_thresh():
    cls_boxes, cls_segms, cls_keyps, m = _results()
    im = np.zeros((120, 160, 3), np.uint8)
    out = vis.vis_one_image_opencv(im, cls_boxes, cls_segms, cls_keyps, thresh=0.5,
                                   show_class=True, dataset=vis.COCO_CLASSES)
    assert out.shape == im.shape and out.dtype == np.uint8
    assert out[m > 0].mean() > 10  # the person's mask is painted
    assert out[12:28, 8:19].max() == 0  # the 0.2 'bicycle' is not (x = 20 is the person's box)
    assert (im == 0).all()  # the input is untouched
    none = vis.vis_one_image_opencv(im, cls_boxes, thresh=0.99)
    assert (none == 0).all()


@pytest.mark.parametrize('ext', ['png', 'jpg', 'pdf'])
def test_vis_one_image_writes_a_file(tmp_path, ext):
    cls_boxes, cls_segms, cls_keyps, _ = _results()
    im = np.random.RandomState(0).randint(0, 255, (120, 160, 3)).astype(np.uint8)
    path = vis.vis_one_image(im, 'pic', str(tmp_path), cls_boxes, cls_segms, cls_keyps,
                             thresh=0.5, dataset=vis.COCO_CLASSES, show_class=True,
                             box_alpha=0.3, ext=ext, dpi=100)
    assert path == str(tmp_path / ('pic.' + ext))
    if ext == 'pdf':
        assert open(path, 'rb').read(5) == b'%PDF-'
        return
    drawn = cv2.imread(path)
    assert drawn.shape == (120, 160, 3)
    assert np.abs(drawn.astype(int) - im[:, :, ::-1].astype(int)).mean() > 1  # something drawn


def test_vis_one_image_without_detections(tmp_path):
    im = np.zeros((50, 60, 3), np.uint8)
    cls_boxes = [[], np.zeros((0, 5), np.float32)]
    assert vis.vis_one_image(im, 'none', str(tmp_path), cls_boxes, ext='png') is None
    path = vis.vis_one_image(im, 'none', str(tmp_path), cls_boxes, ext='png',
                             out_when_no_box=True, dpi=100)
    assert cv2.imread(path).shape == (50, 60, 3)


def test_detections_to_dicts_are_json_ready():
    cls_boxes, cls_segms, cls_keyps, m = _results()
    dets = vis.detections_to_dicts(cls_boxes, cls_segms, cls_keyps, vis.COCO_CLASSES, thresh=0.1)
    json.dumps(dets)
    assert [d['class_name'] for d in dets] == ['person', 'bicycle']  # best first
    assert dets[0]['bbox'] == [20.0, 10.0, 99.0, 109.0]
    rle = dict(dets[0]['segmentation'], counts=dets[0]['segmentation']['counts'].encode())
    assert (mask_util.decode(rle) == m).all()
    assert len(dets[0]['keypoints']) == 17 and dets[0]['keypoints'][0][2] == 5.0
    assert len(vis.detections_to_dicts(cls_boxes, thresh=0.5)) == 1


def test_colormap_is_distinct():
    c = vis.colormap(rgb=True)
    assert c.shape == (79, 3) and c.min() >= 0 and c.max() <= 255
    assert len({tuple(np.round(x)) for x in c}) == 79
    assert np.allclose(vis.colormap()[:, ::-1], c)


def test_precision_recall_plot(tmp_path):
    r = np.linspace(0, 1, 101)
    path = vis.vis_precision_recall([('person', r, 1 - r ** 2), ('car', r, 1 - r)],
                                    str(tmp_path / 'pr' / 'pr.png'), title='bbox')
    im = cv2.imread(path)
    assert im is not None and im.shape[0] > 100


def test_non_coco_keypoints_are_drawn_as_points(tmp_path):
    # three named keypoints (e.g. the keypoint shapes dataset): no COCO skeleton, points only
    kps = np.array([[30, 60, 90], [20, 80, 80], [5, 5, 5], [.9, .9, .9]], np.float32)
    cls_boxes = [[], np.array([[10, 10, 100, 100, 0.9]], np.float32)]
    im = np.zeros((120, 120, 3), np.uint8)
    out = vis.vis_one_image_opencv(im, cls_boxes, None, [[], [kps]], thresh=0.5,
                                   keypoint_names=('top', 'left', 'right'))
    assert out[20, 30].max() > 0 and out[80, 90].max() > 0  # the points
    assert out[50, 45].max() == 0  # no line between them
    path = vis.vis_one_image(im, 'kps', str(tmp_path), cls_boxes, None, [[], [kps]], thresh=0.5,
                             ext='png', dpi=100, keypoint_names=('top', 'left', 'right'))
    assert cv2.imread(path) is not None
