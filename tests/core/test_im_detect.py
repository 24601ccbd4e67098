"""im_detect_all and its pieces against hand-computed values, small references and a fake model.

``FakeRCNN`` implements the model interface (``model(data, im_info)``, ``mask_net``,
``keypoint_net``) with a transparent rule: every bright rectangle of colour channel c (BGR) is an
object of class c + 1. It is exactly equivariant to horizontal flips and works image by image, so
flip test-time augmentation and batching must reproduce its plain results.
"""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F

from pydetectron.core import test as test_mod
from pydetectron.core import test_aug
from pydetectron.core.config import cfg, reset_cfg
from pydetectron.utils import boxes as box_utils

# Deltas the fake box head predicts for every RoI and class: flip-equivariant (dx = 0).
FAKE_DELTAS = (0.0, 0.05, 0.1, -0.05)
M = 14  # mask resolution of the fake mask head


class FakeRCNN(torch.nn.Module):
    """Finds the bright rectangles of each colour channel; see the module docstring."""

    def __init__(self, num_classes=4, thresh=60.0, deltas=FAKE_DELTAS):
        super().__init__()
        self.num_classes = num_classes
        self.thresh = thresh
        self.deltas = deltas
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.forward_calls = 0

    def _objects(self, blob, h, w):
        """(x1, y1, x2, y2, class) of the rectangles of one (3, H, W) blob, inclusive pixels."""
        objs = []
        for c in range(3):
            fg = (blob[c, :h, :w] > self.thresh).cpu().numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=4)
            for k in range(1, n):
                x, y, bw, bh = stats[k, :4]
                objs.append((x, y, x + bw - 1, y + bh - 1, c + 1))
        return objs

    def forward(self, data, im_info, roidb=None, rois=None):
        self.forward_calls += 1
        C = self.num_classes
        all_rois, all_scores = [], []
        for i in range(data.shape[0]):
            h, w = int(im_info[i, 0]), int(im_info[i, 1])
            for x1, y1, x2, y2, c in self._objects(data[i], h, w):
                # the object and two copies shifted 2 px left and right (a symmetric set)
                for dx, s in ((0, 0.9), (-2, 0.6), (2, 0.6)):
                    all_rois.append([i, x1 + dx, y1, x2 + dx, y2])
                    p = np.full(C, 0.02, np.float32)
                    p[c] = s
                    p[0] = 1 - p[1:].sum()
                    all_scores.append(p)
        rois_t = torch.tensor(all_rois, dtype=torch.float32).reshape(-1, 5).to(data.device)
        cls_score = torch.tensor(np.array(all_scores), dtype=torch.float32).reshape(-1, C)
        bbox_pred = torch.tensor(self.deltas, dtype=torch.float32).repeat(len(all_rois), C)
        if cfg.MODEL.RPN_ONLY:
            return {'rois': rois_t, 'rpn_roi_probs': cls_score[:, 1:].max(dim=1)[0]}
        return {'blob_conv': data, 'rois': rois_t, 'cls_score': cls_score.to(data.device),
                'bbox_pred': bbox_pred.reshape(-1, 4 * C).to(data.device)}

    def _sample(self, blob_conv, rois, size):
        """(R, size, size) brightness of each RoI on a regular grid (continuous coordinates:
        pixel p spans [p, p + 1), so the box spans [x1, x2 + 1))."""
        out = []
        # A fixed canvas, so that the grid's normalised coordinates (and their rounding) do not
        # depend on how much a batch padded the blob.
        H = W = 512
        blob_conv = F.pad(blob_conv, (0, W - blob_conv.shape[3], 0, H - blob_conv.shape[2]))
        t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        for r in rois:
            b = int(r[0])
            xs = r[1] + t * (r[3] + 1 - r[1])
            ys = r[2] + t * (r[4] + 1 - r[2])
            gx = (2 * xs / W - 1)[None, :].expand(size, size)
            gy = (2 * ys / H - 1)[:, None].expand(size, size)
            grid = torch.stack([gx, gy], dim=-1)[None]
            v = F.grid_sample(blob_conv[b:b + 1], grid, align_corners=False)  # (1, 3, s, s)
            out.append(v[0].max(dim=0)[0])
        return torch.stack(out) if out else torch.zeros((0, size, size))

    def mask_net(self, blob_conv, rois):
        fg = (self._sample(blob_conv, rois.cpu(), M) > self.thresh).float()
        probs = 0.05 + 0.9 * fg  # (R, M, M)
        C = self.num_classes if cfg.MRCNN.CLS_SPECIFIC_MASK else 1
        return probs[:, None].repeat(1, C, 1, 1)

    def keypoint_net(self, blob_conv, rois):
        """(R, 17, s, s): the RoI's brightness plus a bump per keypoint, as for a person facing
        the camera: 'left_*' keypoints at 3/4 of the box width (the image's right), 'right_*' ones
        at 1/4 and the nose in the middle, each left/right pair at its own height. So a keypoint's
        heatmap on the flipped image is the
        mirror of its left/right partner's: flip-equivariant, and neither mirror-symmetric nor
        the same for both sides (un-mirroring and the left/right swap both matter)."""
        from pydetectron.utils.vis import COCO_KEYPOINTS
        s = 16
        v = self._sample(blob_conv, rois.cpu(), s) / 100.  # (R, s, s)
        yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing='ij')
        maps = []
        for k, name in enumerate(COCO_KEYPOINTS):
            # on cell centres (12.5 and its mirror 3.5), so that no argmax tie breaks the mirror
            cx = 12.5 if name.startswith('left') else 3.5 if name.startswith('right') else s / 2
            cy = (0.2 + 0.07 * ((k + 1) // 2)) * s   # each left/right pair at its own height
            maps.append(5 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.))
        return v[:, None] + torch.stack(maps)[None]


@pytest.fixture(autouse=True)
def test_cfg():
    reset_cfg()
    cfg.MODEL.NUM_CLASSES = 4
    cfg.MODEL.FASTER_RCNN = True
    cfg.MODEL.BBOX_REG_WEIGHTS = (10., 10., 5., 5.)
    cfg.TEST.SCALE = 120
    cfg.TEST.MAX_SIZE = 1000
    cfg.MRCNN.RESOLUTION = M
    yield cfg
    reset_cfg()


def _image(h=120, w=160, rects=((20, 30, 59, 69, 2), (100, 10, 129, 49, 1))):
    """Black BGR image with filled rectangles (x1, y1, x2, y2 inclusive, channel)."""
    im = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2, c in rects:
        im[y1:y2 + 1, x1:x2 + 1, c] = 255
    return im


def _expected_box(x1, y1, x2, y2, width, height):
    b = box_utils.bbox_transform(np.array([[x1, y1, x2, y2]], np.float32),
                                 np.array([FAKE_DELTAS], np.float32), (10., 10., 5., 5.))
    return box_utils.clip_tiled_boxes(b, (height, width))[0]


# ---------------------------------------------------------------------------------------------- #
# The plain path
# ---------------------------------------------------------------------------------------------- #

def test_plain_path_finds_each_rectangle_once():
    im = _image()
    model = FakeRCNN()
    cls_boxes, cls_segms, cls_keyps = test_mod.im_detect_all(model, im)
    assert cls_boxes[0] == [] and cls_segms is None and cls_keyps is None
    assert cls_boxes[1].shape == (0, 5)  # blue: nothing
    # red (channel 2, class 3) and green (class 2): one detection each, NMS removed the copies
    for j, rect in ((3, (20, 30, 59, 69)), (2, (100, 10, 129, 49))):
        assert cls_boxes[j].shape == (1, 5) and cls_boxes[j].dtype == np.float32
        np.testing.assert_allclose(cls_boxes[j][0, :4], _expected_box(*rect, 160, 120),
                                   rtol=1e-5, atol=1e-4)
        assert cls_boxes[j][0, 4] == pytest.approx(0.9)


def test_boxes_return_to_original_pixels_at_another_scale():
    cfg.TEST.SCALE = 240  # the blob is the image at 2x
    cls_boxes, _, _ = test_mod.im_detect_all(FakeRCNN(), _image())
    np.testing.assert_allclose(cls_boxes[3][0, :4], _expected_box(20, 30, 59, 69, 160, 120),
                               atol=1.0)


def test_score_thresh_and_nms_thresh():
    im = _image(rects=((20, 30, 59, 69, 2),))
    model = FakeRCNN()
    cfg.TEST.NMS = 0.95  # the shifted copies (IoU ~0.9) survive
    cls_boxes, _, _ = test_mod.im_detect_all(model, im)
    assert cls_boxes[3].shape[0] == 3
    np.testing.assert_allclose(np.sort(cls_boxes[3][:, 4]), [0.6, 0.6, 0.9], rtol=1e-6)
    cfg.TEST.SCORE_THRESH = 0.7  # now only the 0.9 box passes
    cls_boxes, _, _ = test_mod.im_detect_all(model, im)
    assert cls_boxes[3].shape[0] == 1


def test_masks_and_keypoints_follow_their_boxes():
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.KEYPOINTS_ON = True
    cfg.MODEL.NUM_CLASSES = 4
    im = _image()
    cls_boxes, cls_segms, cls_keyps = test_mod.im_detect_all(FakeRCNN(), im)
    for j in (2, 3):
        assert len(cls_segms[j]) == len(cls_boxes[j]) == 1
    m = mask_util.decode(cls_segms[3][0])
    truth = np.zeros(im.shape[:2], np.uint8)
    truth[30:70, 20:60] = 1
    inter = (m & truth).sum()
    assert inter / float((m | truth).sum()) > 0.9
    # Detectron's convention: keypoint models detect only people, so every detection's pose is
    # filed under the person class (1)
    assert len(cls_keyps[1]) == 2 and cls_keyps[3] == []


def test_person_keypoints_decoded_in_the_box():
    cfg.MODEL.KEYPOINTS_ON = True
    im = _image(rects=((40, 20, 79, 99, 0),))  # blue: class 1, the person class
    cls_boxes, _, cls_keyps = test_mod.im_detect_all(FakeRCNN(), im)
    assert len(cls_keyps[1]) == len(cls_boxes[1]) == 1
    kps = cls_keyps[1][0]
    assert kps.shape == (4, 17) and kps.dtype == np.float32
    x1, y1, x2, y2 = cls_boxes[1][0, :4]
    # each heatmap's bump: at 1/2 (nose), 3/4 (left_*) or 1/4 (right_*) of the box width, and
    # (20 + 7 p) % down for the p-th left/right pair (FakeRCNN.keypoint_net)
    from pydetectron.utils.vis import COCO_KEYPOINTS
    fx = np.array([12.5 / 16 if n.startswith('left') else 3.5 / 16 if n.startswith('right')
                   else 0.5 for n in COCO_KEYPOINTS])
    fy = 0.2 + 0.07 * ((np.arange(17) + 1) // 2)
    np.testing.assert_allclose(kps[0], x1 + fx * (x2 - x1), atol=2.0)
    np.testing.assert_allclose(kps[1], y1 + fy * (y2 - y1), atol=3.0)
    assert (kps[3] > 0).all() and (kps[3] <= 1).all()


# ---------------------------------------------------------------------------------------------- #
# Batching
# ---------------------------------------------------------------------------------------------- #

def _assert_same_results(a, b):
    (ba, sa, ka), (bb, sb, kb) = a, b
    for j in range(1, len(ba)):
        np.testing.assert_array_equal(ba[j], bb[j])
        if sa is not None:
            assert [r['counts'] for r in sa[j]] == [r['counts'] for r in sb[j]]
        if ka is not None:
            for x, y in zip(ka[j], kb[j]):
                np.testing.assert_array_equal(x, y)
    assert (sa is None) == (sb is None) and (ka is None) == (kb is None)


def test_batched_inference_equals_one_image_at_a_time():
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.KEYPOINTS_ON = True
    ims = [_image(), _image(100, 150, ((10, 10, 49, 79, 0), (60, 20, 99, 59, 2))),
           _image(rects=())]
    model = FakeRCNN()
    batched = test_mod.im_detect_all(model, ims)
    assert model.forward_calls == 1 and len(batched) == 3
    singles = [test_mod.im_detect_all(model, im) for im in ims]
    for a, b in zip(batched, singles):
        _assert_same_results(a, b)
    assert all(len(b) == 0 for b in batched[2][0][1:])


# ---------------------------------------------------------------------------------------------- #
# Test-time augmentation
# ---------------------------------------------------------------------------------------------- #

def _symmetric_image():
    im = _image(rects=((20, 30, 59, 69, 2), (100, 30, 139, 69, 2), (70, 5, 89, 104, 1)))
    assert (im == im[:, ::-1]).all()  # flip-symmetric (width 160: x -> 159 - x)
    return im


def test_hflip_pass_maps_boxes_back_to_the_original_image():
    im = _image()
    model = FakeRCNN()
    s_i, b_i, _, _ = test_mod.im_detect_bbox(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    s_f, b_f, _ = test_mod.im_detect_bbox_hflip(model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE,
                                                [None])
    # same set of (box, score) rows: the flipped copies come back in another order
    key = lambda s, b: sorted(map(tuple, np.round(np.hstack((b[0].numpy(), s[0].numpy())), 3)))
    assert key(s_i, b_i) == key(s_f, b_f)


def test_flip_tta_of_a_symmetric_image_returns_the_same_boxes():
    im = _symmetric_image()
    model = FakeRCNN()
    plain, _, _ = test_mod.im_detect_all(model, im)
    cfg.TEST.BBOX_AUG.ENABLED = True
    cfg.TEST.BBOX_AUG.H_FLIP = True
    tta, _, _ = test_mod.im_detect_all(model, im)
    for j in range(1, 4):
        np.testing.assert_allclose(np.sort(tta[j], axis=0), np.sort(plain[j], axis=0),
                                   rtol=1e-5, atol=1e-4)
    assert len(plain[3]) == 2 and len(plain[2]) == 1


@pytest.mark.parametrize('heur', ['UNION', 'ID'])
def test_scale_and_aspect_ratio_tta(heur):
    im = _image()
    model = FakeRCNN()
    plain, _, _ = test_mod.im_detect_all(model, im)
    cfg.TEST.BBOX_AUG.ENABLED = True
    cfg.TEST.BBOX_AUG.SCORE_HEUR = heur
    cfg.TEST.BBOX_AUG.COORD_HEUR = heur
    cfg.TEST.BBOX_AUG.SCALES = (240,)
    cfg.TEST.BBOX_AUG.SCALE_H_FLIP = True
    cfg.TEST.BBOX_AUG.ASPECT_RATIOS = (2.0,)
    cfg.TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP = True
    if heur == 'ID':
        cfg.MODEL.FASTER_RCNN = True
        with pytest.raises(ValueError, match='UNION'):
            test_mod.im_detect_all(model, im)
        return
    calls = model.forward_calls
    tta, _, _ = test_mod.im_detect_all(model, im)
    assert model.forward_calls - calls == 5  # 2 scales x (1 + flip), 2 ratios x ..., identity
    for j in (2, 3):
        assert tta[j].shape[0] == 1  # the transforms' boxes agree within NMS
        np.testing.assert_allclose(tta[j][0, :4], plain[j][0, :4], atol=1.5)


def test_mask_tta_heuristics():
    cfg.MODEL.MASK_ON = True
    # an L-shaped object (its bar to the right at the top): its mask is not mirror-symmetric, so
    # a flipped pass must be un-mirrored to agree
    im = _image(rects=((20, 30, 59, 69, 2), (60, 30, 79, 41, 2), (100, 60, 129, 99, 1)))
    plain_masks = mask_util.decode(test_mod.im_detect_all(FakeRCNN(), im)[1][3][0])
    assert (plain_masks != plain_masks[:, ::-1]).any()
    model = FakeRCNN()
    plain = test_mod.im_detect_all(model, im)
    cfg.TEST.MASK_AUG.ENABLED = True
    cfg.TEST.MASK_AUG.H_FLIP = True
    for heur in ('SOFT_AVG', 'SOFT_MAX', 'LOGIT_AVG'):
        cfg.TEST.MASK_AUG.HEUR = heur
        tta = test_mod.im_detect_all(model, im)
        # the fake masks are flip-equivariant: every heuristic reproduces the plain masks
        _assert_same_results(plain, tta)
    boxes = [np.array([[20, 30, 59, 69]], np.float32)]
    cfg.TEST.MASK_AUG.HEUR = 'NOPE'
    with pytest.raises(NotImplementedError, match='SOFT_AVG'):
        test_mod.im_detect_mask_aug(model, [im], boxes)


def test_logit_avg_is_the_sigmoid_of_the_mean_logit(monkeypatch):
    cfg.TEST.MASK_AUG.ENABLED = True
    cfg.TEST.MASK_AUG.H_FLIP = True
    cfg.TEST.MASK_AUG.HEUR = 'LOGIT_AVG'
    outs = iter([[np.full((1, 1, 2, 2), 0.9, np.float32)],
                 [np.full((1, 1, 2, 2), 0.5, np.float32)]])
    monkeypatch.setattr(test_aug, '_masks_at', lambda *a, **k: next(outs))
    m = test_mod.im_detect_mask_aug(None, [np.zeros((4, 4, 3), np.uint8)], [np.zeros((1, 4))])
    logit = (np.log(0.9 / 0.1) + 0.0) / 2
    np.testing.assert_allclose(m[0], 1 / (1 + np.exp(-logit)), rtol=1e-6)


def test_keypoint_tta_with_flip_reproduces_plain_heatmaps():
    cfg.MODEL.KEYPOINTS_ON = True
    im = _image(rects=((40, 20, 79, 99, 0),))
    model = FakeRCNN()
    plain = test_mod.im_detect_all(model, im)
    kps = plain[2][1][0]                        # (4, 17): x, y, logit, prob
    # the fake's left keypoints lie right of its right keypoints (a person facing the camera)
    assert (kps[0, 1] > kps[0, 2] + 10) and (kps[0, 3] > kps[0, 4] + 10)
    cfg.TEST.KPS_AUG.ENABLED = True
    cfg.TEST.KPS_AUG.H_FLIP = True
    for heur in ('HM_MAX', 'HM_AVG'):
        cfg.TEST.KPS_AUG.HEUR = heur
        tta = test_mod.im_detect_all(model, im)
        np.testing.assert_allclose(tta[2][1][0], plain[2][1][0], rtol=1e-5, atol=1e-5)


def test_size_dependent_heatmap_combination():
    cfg.TEST.KPS_AUG.AREA_TH = 100  # boxes below 10 x 10 are 'small'
    boxes = np.array([[0, 0, 4, 4], [0, 0, 19, 19]], np.float32)  # areas 25 and 400
    ident = np.full((2, 1, 2, 2), 1.0)
    down = np.full((2, 1, 2, 2), 3.0)   # a downscaled pass: not for the small box
    up = np.full((2, 1, 2, 2), 5.0)     # an upscaled pass: not for the large box
    c = test_mod.combine_heatmaps_size_dep([ident, down, up], [False, True, False],
                                           [False, False, True], boxes, np.mean)
    assert c[0, 0, 0, 0] == pytest.approx(3.0)  # mean(1, 5)
    assert c[1, 0, 0, 0] == pytest.approx(2.0)  # mean(1, 3)


# ---------------------------------------------------------------------------------------------- #
# NMS, soft-NMS, voting, the per-image limit
# ---------------------------------------------------------------------------------------------- #

def _soft_nms_reference(dets, sigma, nt, thresh, method):
    """Soft-NMS as Detectron's Cython loop runs it, in float64 (a readable reference)."""
    dets = dets.astype(np.float64).copy()
    n = dets.shape[0]
    i = 0
    while i < n:
        m = i + int(np.argmax(dets[i:n, 4]))
        dets[[i, m]] = dets[[m, i]]
        b = dets[i]
        pos = i + 1
        while pos < n:
            o = dets[pos]
            iw = min(b[2], o[2]) - max(b[0], o[0]) + 1
            ih = min(b[3], o[3]) - max(b[1], o[1]) + 1
            ov = 0.
            if iw > 0 and ih > 0:
                ua = (o[2] - o[0] + 1) * (o[3] - o[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
                ov = iw * ih / (ua - iw * ih)
            if method == 'linear':
                w = 1 - ov if ov > nt else 1.
            elif method == 'gaussian':
                w = np.exp(-(ov * ov) / sigma)
            else:
                w = 0. if ov > nt else 1.
            dets[pos, 4] *= w
            if dets[pos, 4] < thresh:
                dets[[pos, n - 1]] = dets[[n - 1, pos]]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return dets[:n]


def test_soft_nms_hand_computed_linear():
    # IoU of the two boxes: 10x10 each, overlap 10x5 -> 50 / 150 = 1/3 > 0.3 -> 0.8 * (1 - 1/3)
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 5, 9, 14, 0.8]], np.float32)
    out = test_mod.soft_nms(dets, sigma=0.5, overlap_thresh=0.3, score_thresh=0.001,
                            method='linear')
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8 * (2 / 3.)], rtol=1e-6)


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'hard'])
def test_soft_nms_path_matches_reference(method):
    rng = np.random.RandomState(3)
    n = 40
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(10, 40, (n, 2))
    boxes = np.hstack((xy, xy + wh)).astype(np.float32)
    scores = np.zeros((n, 2), np.float32)
    scores[:, 1] = rng.uniform(0.05, 1, n)
    scores[:, 0] = 1 - scores[:, 1]
    cfg.MODEL.NUM_CLASSES = 2
    cfg.TEST.SOFT_NMS.ENABLED = True
    cfg.TEST.SOFT_NMS.METHOD = method
    cfg.TEST.NMS = 0.3
    cfg.TEST.SCORE_THRESH = 0.05
    _, _, cls_boxes = test_mod.box_results_with_nms_and_limit(scores, np.tile(boxes, (1, 2)))
    inds = scores[:, 1] > 0.05
    ref = _soft_nms_reference(np.hstack((boxes[inds], scores[inds, 1:])), 0.5, 0.3, 0.0001,
                              method)
    assert cls_boxes[1].shape == ref.shape
    np.testing.assert_allclose(cls_boxes[1], ref, rtol=1e-5, atol=1e-5)


def test_box_voting_scoring_methods_hand_computed():
    top = np.array([[0, 0, 10, 10, 0.9]], np.float32)
    all_dets = np.array([[0, 0, 10, 10, 0.9], [2, 2, 12, 12, 0.6], [50, 50, 60, 60, 0.8]],
                        np.float32)
    # IoU(top, second) = 81 / (121 + 121 - 81) = 81/161 >= 0.5: two voters, weights 0.9, 0.6
    iou = 81 / 161.
    box = (0.9 * np.array([0, 0, 10, 10]) + 0.6 * np.array([2, 2, 12, 12])) / 1.5
    ws = np.array([0.9, 0.6])
    beta = 2.0
    expected = {
        'ID': 0.9,
        'AVG': 0.75,
        'IOU_AVG': (0.9 * 1 + 0.6 * iou) / (1 + iou),
        'GENERALIZED_AVG': np.sqrt(np.mean(ws ** 2)),
        'QUASI_SUM': 1.5 / 2 ** 2,
        # P(class) vs P(not class) = (0.9, 0.1) and (0.6, 0.4), softened with temperature 2
        'TEMP_AVG': np.mean([np.sqrt(.9) / (np.sqrt(.9) + np.sqrt(.1)),
                             np.sqrt(.6) / (np.sqrt(.6) + np.sqrt(.4))]),
    }
    for method, score in expected.items():
        out = box_utils.box_voting(top, all_dets, 0.5, scoring_method=method, beta=beta)
        np.testing.assert_allclose(out[0, :4], box, rtol=1e-5)
        assert out[0, 4] == pytest.approx(score, rel=1e-5), method
    with pytest.raises(ValueError, match='scoring_method'):
        box_utils.box_voting(top, all_dets, 0.5, scoring_method='MEDIAN')


def test_box_voting_in_the_test_path():
    cfg.MODEL.NUM_CLASSES = 2
    cfg.TEST.BBOX_VOTE.ENABLED = True
    cfg.TEST.BBOX_VOTE.VOTE_TH = 0.5
    cfg.TEST.BBOX_VOTE.SCORING_METHOD = 'AVG'
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8]], np.float32)
    _, _, cls_boxes = test_mod.box_results_with_nms_and_limit(scores, np.tile(boxes, (1, 2)))
    # NMS at 0.3 keeps boxes 0 and 2; box 0 is voted with box 1
    np.testing.assert_allclose(cls_boxes[1][0], [0.8, 0.8, 10.8, 10.8, 0.75], rtol=1e-5)
    np.testing.assert_allclose(cls_boxes[1][1], [50, 50, 60, 60, 0.8], rtol=1e-6)


def test_detections_per_image_limit_keeps_the_best_over_classes():
    rng = np.random.RandomState(0)
    n = 60
    xy = np.arange(n, dtype=np.float32)[:, None] * 30  # disjoint boxes: NMS keeps all
    boxes = np.hstack((xy, xy, xy + 10, xy + 10))
    scores = rng.uniform(0.1, 0.3, (n, 3)).astype(np.float32)
    cfg.MODEL.NUM_CLASSES = 3
    cfg.TEST.DETECTIONS_PER_IM = 50
    s, b, cls_boxes = test_mod.box_results_with_nms_and_limit(scores, np.tile(boxes, (1, 3)))
    assert len(s) == 50 and b.shape == (50, 4)
    kept = np.sort(np.concatenate([cls_boxes[1][:, 4], cls_boxes[2][:, 4]]))
    np.testing.assert_allclose(kept, np.sort(scores[:, 1:].ravel())[-50:])
    # flat results are in class order: class 1's rows first
    np.testing.assert_array_equal(s[:len(cls_boxes[1])], cls_boxes[1][:, 4])


def test_device_postprocess_matches_numpy_path():
    rng = np.random.RandomState(1)
    n, C = 300, 5
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.hstack((xy, xy + rng.uniform(5, 60, (n, 2)))).astype(np.float32)
    boxes = np.tile(boxes, (1, C)) + rng.uniform(-3, 3, (n, 4 * C)).astype(np.float32)
    scores = rng.dirichlet(np.ones(C), n).astype(np.float32)
    cfg.MODEL.NUM_CLASSES = C
    cfg.TEST.DETECTIONS_PER_IM = 40
    ref = test_mod.box_results_with_nms_and_limit(scores, boxes)
    dev = test_mod.box_results_for_images([torch.from_numpy(scores)],
                                          [torch.from_numpy(boxes)])[0]
    for j in range(1, C):
        np.testing.assert_allclose(dev[2][j], ref[2][j], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dev[1], ref[1], rtol=1e-5, atol=1e-4)


def _refined_case(seed, n=300, C=5):
    """Clustered boxes (overlaps to vote and decay) with per-class jitter and Dirichlet scores."""
    rng = np.random.RandomState(seed)
    centres = rng.uniform(0, 200, (12, 2))
    xy = centres[rng.randint(12, size=n)] + rng.normal(0, 6, (n, 2))
    boxes = np.hstack((xy, xy + rng.uniform(20, 60, (n, 2)))).astype(np.float32)
    boxes = np.tile(boxes, (1, C)) + rng.uniform(-3, 3, (n, 4 * C)).astype(np.float32)
    scores = rng.dirichlet(np.ones(C) * 0.5, n).astype(np.float32)
    return scores, boxes


def _refined_on_device(scores, boxes, device):
    from pydetectron.modeling import postprocess
    soft = dict(sigma=cfg.TEST.SOFT_NMS.SIGMA, method=cfg.TEST.SOFT_NMS.METHOD) \
        if cfg.TEST.SOFT_NMS.ENABLED else None
    vote = dict(thresh=cfg.TEST.BBOX_VOTE.VOTE_TH,
                scoring_method=cfg.TEST.BBOX_VOTE.SCORING_METHOD) \
        if cfg.TEST.BBOX_VOTE.ENABLED else None
    d = postprocess.box_results_soft_nms_vote(
        torch.from_numpy(scores).to(device), torch.from_numpy(boxes).to(device),
        score_thresh=cfg.TEST.SCORE_THRESH, nms_thresh=cfg.TEST.NMS,
        detections_per_im=cfg.TEST.DETECTIONS_PER_IM, soft_nms=soft, bbox_vote=vote)
    return test_mod._host_box_results(d)


REFINED = [(soft, vote) for soft in (None, 'linear', 'gaussian', 'hard')
           for vote in (None, 'ID', 'AVG', 'IOU_AVG', 'TEMP_AVG', 'GENERALIZED_AVG', 'QUASI_SUM')
           if soft or vote]


def _check_refined(soft, vote, device, seed):
    C = 5
    scores, boxes = _refined_case(seed, C=C)
    cfg.MODEL.NUM_CLASSES = C
    cfg.TEST.DETECTIONS_PER_IM = 60
    cfg.TEST.SOFT_NMS.ENABLED = soft is not None
    cfg.TEST.SOFT_NMS.METHOD = soft or 'linear'
    cfg.TEST.BBOX_VOTE.ENABLED = vote is not None
    cfg.TEST.BBOX_VOTE.SCORING_METHOD = vote or 'ID'
    ref = test_mod.box_results_with_nms_and_limit(scores, boxes)
    dev = _refined_on_device(scores, boxes, device)
    assert sum(len(ref[2][j]) for j in range(1, C)) > 20
    for j in range(1, C):
        # each class's rows in Detectron's order (Soft-NMS's selection order, else RoI order)
        assert dev[2][j].shape == ref[2][j].shape, (j, dev[2][j].shape, ref[2][j].shape)
        np.testing.assert_allclose(dev[2][j], ref[2][j], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dev[0], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('soft, vote', REFINED)
def test_soft_nms_and_box_voting_on_tensors_match_detectrons_numpy(soft, vote):
    """postprocess.box_results_soft_nms_vote (what a CUDA model runs), here on CPU tensors,
    against Detectron's numpy path, for every Soft-NMS method and voting scoring method."""
    _check_refined(soft, vote, 'cpu', seed=7)


@pytest.mark.cuda
@pytest.mark.parametrize('soft, vote', REFINED)
def test_soft_nms_and_box_voting_on_the_gpu_match_detectrons_numpy(soft, vote):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _check_refined(soft, vote, 'cuda', seed=7)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_a_cuda_models_soft_nms_takes_the_device_path(monkeypatch):
    """box_results_for_images sends CUDA tensors to the device code and CPU ones to numpy (the
    device tensors faked: a CPU tensor that says it is on CUDA)."""
    from pydetectron.modeling import postprocess
    scores, boxes = _refined_case(1)
    cfg.MODEL.NUM_CLASSES = 5
    cfg.TEST.SOFT_NMS.ENABLED = True
    calls = []
    real = postprocess.box_results_soft_nms_vote
    monkeypatch.setattr(postprocess, 'box_results_soft_nms_vote',
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))

    class Cuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    s, b = torch.from_numpy(scores), torch.from_numpy(boxes)
    host = test_mod.box_results_for_images([s], [b])[0]
    assert calls == []
    dev = test_mod.box_results_for_images([s.as_subclass(Cuda)], [b.as_subclass(Cuda)])[0]
    assert len(calls) == 1 and calls[0]['soft_nms'] == {'sigma': 0.5, 'method': 'linear'}
    assert calls[0]['bbox_vote'] is None
    np.testing.assert_allclose(dev[1], host[1], rtol=1e-5, atol=1e-4)


def _prepared_blob_arrays(ims, scale, max_size):
    blob = test_mod.prepare_image_blob(ims, scale, max_size)
    assert (blob.scale, blob.max_size) == (scale, max_size)
    return blob.data.numpy(), blob.im_info.numpy(), blob.im_scales


@pytest.mark.parametrize('make', [test_mod.get_image_blob, _prepared_blob_arrays],
                         ids=['get_image_blob', 'prepare_image_blob'])
def test_input_blob_bit_identical_to_detectron_on_photos(coco_mini, make):
    import glob
    import os
    paths = sorted(glob.glob(os.path.join(coco_mini, 'images', 'val2017', '*.jpg')))[:2]
    ims = [cv2.imread(p) for p in paths]
    cfg.FPN.FPN_ON = True
    data, im_info, im_scales = make(ims, 800, 1333)
    for i, im in enumerate(ims):
        # Detectron: the image minus the float64 means, in float64, rounded once to float32;
        # resized by cv2 with fx = fy = the scale
        diff = (im.astype(np.float64)
                - np.float64([102.9801, 115.9465, 122.7717])).astype(np.float32)
        expected = cv2.resize(diff, None, None, fx=im_scales[i], fy=im_scales[i],
                              interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        h, w = expected.shape[1:]
        np.testing.assert_array_equal(data[i, :, :h, :w], expected)
        assert not data[i, :, h:].any() and not data[i, :, :, w:].any()
        assert im_info[i, 0] % 32 == 0 and im_info[i, 1] % 32 == 0


def test_shape_buckets_pad_the_test_blob_but_not_im_info(coco_mini):
    import glob
    import os
    paths = sorted(glob.glob(os.path.join(coco_mini, 'images', 'val2017', '*.jpg')))[:3]
    ims = [cv2.imread(p) for p in paths]
    cfg.FPN.FPN_ON = True
    cfg.TEST.SCALE, cfg.TEST.MAX_SIZE = 800, 1333     # the edges: 800 and 1344
    for batch in ([ims[0]], [ims[1]], ims):
        plain, info, scales = test_mod.get_image_blob(batch, 800, 1333)
        cfg.SHAPE_BUCKETS = 256
        data, bucket_info, bucket_scales = test_mod.get_image_blob(batch, 800, 1333)
        # the blob test_net's readers make ahead is the same
        np.testing.assert_array_equal(_prepared_blob_arrays(batch, 800, 1333)[0], data)
        cfg.SHAPE_BUCKETS = 0
        h, w = plain.shape[2:]
        # the batch's stride-padded size, then the next multiple of 256 or edge (800, 1344)
        # (these photos: 800 x 1216, 1216 x 800, and 1216 x 1216 for the batch of three)
        up = {800: 800, 1216: 1280}
        assert data.shape == plain.shape[:2] + (up[h], up[w]), (h, w)
        np.testing.assert_array_equal(data[:, :, :h, :w], plain)
        assert not data[:, :, h:].any() and not data[:, :, :, w:].any()
        # im_info (clipping of proposals and boxes) as without buckets
        np.testing.assert_array_equal(bucket_info, info)
        assert bucket_scales == scales


# ---------------------------------------------------------------------------------------------- #
# Detectron's row order: each class's survivors in RoI order, not in score order
# ---------------------------------------------------------------------------------------------- #

# RoIs (original pixels) and their class-1 / class-2 probabilities. Class 1's NMS at 0.5 keeps
# RoIs 1, 2 and 4 (4 suppresses 0, 1 suppresses 3): RoI order gives scores 0.9, 0.6, 0.95
# where score order would give 0.95, 0.9, 0.6.
ORDER_ROIS = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49], [21, 21, 30, 30],
                       [1, 1, 10, 10]], np.float32)
ORDER_SCORES = np.array([[0.3, 0.65], [0.9, 0.01], [0.6, 0.01], [0.7, 0.01], [0.95, 0.01]],
                        np.float32)


class FixedRoIModel(torch.nn.Module):
    """Returns ORDER_ROIS (scaled to the blob) with ORDER_SCORES and zero deltas for every image;
    at a blob scale other than 1 the scores are halved (to tell test-time transforms apart)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, data, im_info, roidb=None, rois=None):
        n, r = data.shape[0], ORDER_ROIS.shape[0]
        out_rois, probs = [], []
        for i in range(n):
            scale = float(im_info[i, 2])
            out_rois.append(np.hstack((np.full((r, 1), i, np.float32), ORDER_ROIS * scale)))
            p = ORDER_SCORES * (1.0 if scale == 1.0 else 0.5)
            probs.append(np.hstack((1 - p.sum(1, keepdims=True), p)))
        return {'blob_conv': data, 'rois': torch.from_numpy(np.vstack(out_rois)),
                'cls_score': torch.from_numpy(np.vstack(probs).astype(np.float32)),
                'bbox_pred': torch.zeros((n * r, 12))}


def _rows(*inds, cls=1, factor=1.0):
    return np.hstack((ORDER_ROIS[list(inds)],
                      ORDER_SCORES[list(inds), cls - 1:cls] * np.float32(factor)))


@pytest.mark.parametrize('limit', [100, 3])
def test_class_rows_come_in_roi_order(limit):
    cfg.MODEL.NUM_CLASSES = 3
    cfg.TEST.NMS = 0.5
    cfg.TEST.DETECTIONS_PER_IM = limit
    im = np.zeros((120, 160, 3), np.uint8)  # TEST.SCALE 120: blob scale 1
    # limit 3 (scores 0.95, 0.9, 0.65 over classes): Detectron's np.where drops 0.6, rows keep
    # their RoI order
    expected1 = _rows(1, 2, 4) if limit == 100 else _rows(1, 4)
    for cls_boxes, _, _ in [test_mod.im_detect_all(FixedRoIModel(), im)] + \
            test_mod.im_detect_all(FixedRoIModel(), [im, im]):
        np.testing.assert_array_equal(cls_boxes[1], expected1)
        np.testing.assert_array_equal(cls_boxes[2], _rows(0, cls=2))
    # the numpy path (box voting with the ID score keeps the rows and their scores)
    cfg.TEST.BBOX_VOTE.ENABLED = True
    cls_boxes, _, _ = test_mod.im_detect_all(FixedRoIModel(), im)
    np.testing.assert_array_equal(cls_boxes[1][:, 4], expected1[:, 4])
    np.testing.assert_array_equal(cls_boxes[2], _rows(0, cls=2))


def test_union_tta_rows_in_the_order_of_the_stacked_transforms():
    cfg.MODEL.NUM_CLASSES = 3
    cfg.TEST.NMS = 0.5
    cfg.TEST.BBOX_AUG.ENABLED = True
    cfg.TEST.BBOX_AUG.SCORE_HEUR = 'UNION'
    cfg.TEST.BBOX_AUG.COORD_HEUR = 'UNION'
    cfg.TEST.BBOX_AUG.SCALES = (240,)  # first (scores halved), then the identity
    im = np.zeros((120, 160, 3), np.uint8)
    # identity rows 5..9 suppress all the scale transform's rows 0..4: RoIs 6, 7, 9 survive
    cls_boxes, _, _ = test_mod.im_detect_all(FixedRoIModel(), im)
    np.testing.assert_array_equal(cls_boxes[1], _rows(1, 2, 4))
    # class 2: the identity's 0.65 and the transform's 0.325 at the same box; 0.325 is suppressed
    np.testing.assert_array_equal(cls_boxes[2], _rows(0, cls=2))
    cfg.TEST.NMS = 1.01  # nothing suppressed: all rows, transform first, each in RoI order
    cls_boxes, _, _ = test_mod.im_detect_all(FixedRoIModel(), im)
    np.testing.assert_array_equal(cls_boxes[1], np.vstack((_rows(0, 1, 2, 3, 4, factor=0.5),
                                                           _rows(0, 1, 2, 3, 4))))


# ---------------------------------------------------------------------------------------------- #
# Mask pasting and keypoint decoding
# ---------------------------------------------------------------------------------------------- #

def test_segm_results_pastes_into_the_box_and_clips_at_the_border():
    cfg.MODEL.NUM_CLASSES = 2
    masks = np.ones((2, 2, M, M), np.float32)
    boxes = np.array([[10, 20, 39, 59], [-20, 90, 29, 129]], np.float32)  # 2nd leaves the image
    cls_boxes = [[], np.hstack((boxes, np.ones((2, 1), np.float32)))]
    cls_segms = test_mod.segm_results(cls_boxes, masks, boxes, 100, 80)
    assert len(cls_segms[1]) == 2
    m0 = mask_util.decode(cls_segms[1][0])
    assert m0.shape == (100, 80)
    ys, xs = np.nonzero(m0)
    # a full soft mask covers its box to within a pixel (the zero padding sets the edge)
    assert abs(xs.min() - 10) <= 1 and abs(xs.max() - 39) <= 1
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 59) <= 1
    m1 = mask_util.decode(cls_segms[1][1])
    ys, xs = np.nonzero(m1)
    assert xs.min() == 0 and ys.max() == 99 and abs(xs.max() - 29) <= 1
    # class-agnostic masks (C = 1) paste the same way
    cfg.MRCNN.CLS_SPECIFIC_MASK = False
    agn = test_mod.segm_results(cls_boxes, masks[:, :1], boxes, 100, 80)
    assert agn[1][0]['counts'] == cls_segms[1][0]['counts']


def test_segm_results_threshold():
    cfg.MODEL.NUM_CLASSES = 2
    cfg.MRCNN.THRESH_BINARIZE = 0.5
    masks = np.zeros((1, 2, M, M), np.float32)
    masks[0, 1, :, :M // 2] = 0.9  # left half on
    boxes = np.array([[0, 0, 69, 69]], np.float32)
    segms = test_mod.segm_results([[], np.hstack((boxes, [[1.]]))], masks, boxes, 70, 70)
    m = mask_util.decode(segms[1][0])
    assert m[:, :30].mean() > 0.9 and m[:, 40:].sum() == 0


def _heatmaps_to_keypoints_loop(maps, rois):
    """Detectron's decoding written keypoint by keypoint (INFERENCE_MIN_SIZE = 0)."""
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    out = np.zeros((len(rois), 4, maps.shape[1]), np.float32)
    for i in range(len(rois)):
        w, h = int(np.ceil(widths[i])), int(np.ceil(heights[i]))
        for k in range(maps.shape[1]):
            hm = cv2.resize(maps[i, k], (w, h), interpolation=cv2.INTER_CUBIC)
            pos = hm.argmax()
            x_int, y_int = pos % w, pos // w
            e = np.exp(hm - hm.max())
            out[i, 0, k] = (x_int + 0.5) * widths[i] / w + rois[i, 0]
            out[i, 1, k] = (y_int + 0.5) * heights[i] / h + rois[i, 1]
            out[i, 2, k] = hm[y_int, x_int]
            out[i, 3, k] = e[y_int, x_int] / e.sum()
    return out


def test_heatmaps_to_keypoints_matches_per_keypoint_reference():
    from pydetectron.utils import keypoints as keypoint_utils
    rng = np.random.RandomState(0)
    maps = rng.randn(3, 17, 56, 56).astype(np.float32)
    rois = np.array([[10.3, 20, 100.7, 200.2], [0, 0, 5.5, 3], [50, 60, 300, 90]], np.float32)
    got = keypoint_utils.heatmaps_to_keypoints(maps, rois)
    np.testing.assert_allclose(got, _heatmaps_to_keypoints_loop(maps, rois), rtol=1e-5, atol=1e-5)
    # a single peak lands on its cell centre: cell (3, 5) of 8 on a 16 x 16 box at (10, 20)
    one = np.full((1, 1, 8, 8), -5, np.float32)
    one[0, 0, 3, 5] = 5
    kp = keypoint_utils.heatmaps_to_keypoints(one, np.array([[10, 20, 26, 36]], np.float32))
    assert abs(kp[0, 0, 0] - (10 + 5.5 * 2)) <= 1 and abs(kp[0, 1, 0] - (20 + 3.5 * 2)) <= 1


def test_nms_oks():
    from pydetectron.utils import keypoints as keypoint_utils
    base = np.zeros((4, 17), np.float32)
    base[0] = np.linspace(10, 90, 17)
    base[1] = np.linspace(10, 190, 17)
    base[2] = 1.0
    near = base.copy()
    near[:2] += 1.0
    near[2] = 0.5
    far = base.copy()
    far[0] += 200
    far[2] = 2.0
    kps = np.stack([base, near, far])
    rois = np.array([[0, 0, 99, 199]] * 3, np.float32)
    oks = keypoint_utils.compute_oks(base, rois[0], kps, rois)
    assert oks[0] == pytest.approx(1.0) and oks[1] > 0.9 and oks[2] < 0.01
    assert keypoint_utils.nms_oks(kps, rois, 0.3) == [2, 0]  # ranked by mean logit


def test_nms_oks_filters_person_boxes():
    cfg.MODEL.NUM_CLASSES = 2
    cfg.KRCNN.NMS_OKS = True
    boxes = np.array([[0, 0, 99, 199], [1, 1, 100, 200]], np.float32)
    cls_boxes = [[], np.hstack((boxes, [[0.9], [0.8]])).astype(np.float32)]
    hms = np.zeros((2, 17, 8, 8), np.float32)
    hms[:, :, 4, 4] = 10
    cls_keyps = test_mod.keypoint_results(cls_boxes, hms, boxes)
    assert len(cls_keyps[1]) == 1 and cls_boxes[1].shape == (1, 5)


def test_bad_input_messages():
    with pytest.raises(ValueError, match='image 0'):
        test_mod.im_detect_all(FakeRCNN(), np.zeros((10, 10), np.uint8))
    cfg.MODEL.FASTER_RCNN = False
    with pytest.raises(ValueError, match='box_proposals'):
        test_mod.im_detect_all(FakeRCNN(), _image())
