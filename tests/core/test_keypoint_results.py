"""Keypoint decoding on the device (core/keypoint_results.py) against Detectron's host loop.

The reference below is Detectron's ``heatmaps_to_keypoints`` transcribed: the K heatmaps of a
detection resized together as one K-channel image by ``cv2.resize`` (INTER_CUBIC), then per
keypoint the arg-max, its logit and the softmax of the resized map (each channel's sum taken over
its 2-D map, as Detectron's ``scores_to_probs``).
"""
import cv2
import numpy as np
import pytest
import torch

from pydetectron.core import keypoint_results
from pydetectron.utils import keypoints as keypoint_utils


def _detectron_decode(maps, rois, min_size=0):
    maps = np.transpose(maps, [0, 2, 3, 1])
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    out = np.zeros((len(rois), 4, maps.shape[3]), np.float32)
    for i in range(len(rois)):
        w = int(max(np.ceil(widths[i]), min_size))
        h = int(max(np.ceil(heights[i]), min_size))
        hm = cv2.resize(maps[i], (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, -1)
        hm = np.transpose(hm, [2, 0, 1])
        for k in range(hm.shape[0]):
            pos = hm[k].argmax()
            x_int, y_int = pos % w, pos // w
            e = np.exp(hm[k] - hm[k].max())
            out[i, 0, k] = (x_int + 0.5) * (widths[i] / w) + rois[i, 0]
            out[i, 1, k] = (y_int + 0.5) * (heights[i] / h) + rois[i, 1]
            out[i, 2, k] = hm[k, y_int, x_int]
            out[i, 3, k] = e[y_int, x_int] / np.sum(e)
    return out


def _cases(seed, n=40, k=17, size=56):
    """Heatmaps like a trained head's (a peak per keypoint over a smooth field) on boxes from 0.4
    to 700 pixels a side, some crossing the image's top-left corner."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    maps = rng.randn(n, k, size, size).astype(np.float32)
    cy, cx = rng.uniform(0, size, (2, n, k, 1, 1)).astype(np.float32)
    maps += 12 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18).astype(np.float32)
    x1, y1 = rng.uniform(-30, 600, (2, n))
    w, h = np.exp(rng.uniform(np.log(0.4), np.log(700), (2, n)))
    return maps, np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def test_cubic_weights_are_opencvs_bit_for_bit():
    # cv2.resize of a one-hot row gives its weights; 5 channels take OpenCV's generic path, the
    # one Detectron's 17-channel maps take
    for src in (56, 48):
        for out in list(range(1, 160)) + [333, 801, 1333]:
            eye = np.repeat(np.eye(src, dtype=np.float32)[:, :, None], 5, axis=2)
            want = cv2.resize(eye, (out, src), interpolation=cv2.INTER_CUBIC)[:, :, 2].T
            got = keypoint_results.cubic_matrix([out], src, out + 3, 'cpu')[0].numpy()
            np.testing.assert_array_equal(got[:out], want, err_msg='%d -> %d' % (src, out))
            assert not got[out:].any()


@pytest.mark.parametrize('min_size', [0, 64])
def test_device_decoding_matches_detectrons_loop(min_size):
    maps, rois = _cases(0)
    want = _detectron_decode(maps, rois, min_size)
    got = keypoint_results.heatmaps_to_keypoints(torch.from_numpy(maps), rois, min_size)
    # the arg-max cells, hence the coordinates, are the loop's exactly
    np.testing.assert_array_equal(got[:, :2], want[:, :2])
    # logits and probabilities: the taps summed in another order (measured: 2.0e-7 and 2.7e-6)
    np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[:, 3], want[:, 3], rtol=1e-5)


def test_host_loop_is_detectrons():
    maps, rois = _cases(1, n=12)
    want = _detectron_decode(maps, rois)
    got = keypoint_utils.heatmaps_to_keypoints(maps, rois)
    np.testing.assert_array_equal(got, want)


def test_ties_take_the_first_cell_and_share_the_probability():
    maps = np.zeros((2, 3, 56, 56), np.float32)                  # every cell ties
    rois = np.array([[10, 20, 30, 27.5], [0, 0, 0.5, 0.5]], np.float32)
    got = keypoint_results.heatmaps_to_keypoints(torch.from_numpy(maps), rois)
    # box 0: 20 x 7.5 -> an 20 x 8 map; cell (0, 0) -> (10 + 0.5, 20 + 0.5 * 7.5 / 8)
    np.testing.assert_array_equal(got[0, 0], np.float32(10.5))
    np.testing.assert_array_equal(got[0, 1], np.float32(20 + 0.5 * 7.5 / 8))
    np.testing.assert_allclose(got[0, 3], 1 / 160.0, rtol=1e-6)
    # box 1: under a pixel -> a 1 x 1 map of width 1
    np.testing.assert_array_equal(got[1, :2], np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(got[1, 3], np.ones(3, np.float32))


def test_one_chunk_per_similar_size(monkeypatch):
    # a small chunk budget splits the detections; the results do not change
    maps, rois = _cases(2, n=10)
    whole = keypoint_results.heatmaps_to_keypoints(torch.from_numpy(maps), rois)
    monkeypatch.setattr(keypoint_results, '_CHUNK_ELEMS', 17 * 300 * 300)
    split = keypoint_results.heatmaps_to_keypoints(torch.from_numpy(maps), rois)
    np.testing.assert_array_equal(split[:, :2], whole[:, :2])
    np.testing.assert_allclose(split[:, 2:], whole[:, 2:], rtol=1e-6)   # sums over other padding


def test_no_detections_and_a_count_mismatch():
    empty = keypoint_results.heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56),
                                                   np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 4, 17)
    with pytest.raises(ValueError, match='2 heatmaps for 1 boxes'):
        keypoint_results.heatmaps_to_keypoints(torch.zeros(2, 17, 56, 56),
                                               np.zeros((1, 4), np.float32))


@pytest.mark.cuda
def test_cuda_decoding_matches_detectrons_loop():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True            # must be ignored by the decoding
    try:
        maps, rois = _cases(3, n=100)
        want = _detectron_decode(maps, rois)
        got = keypoint_results.heatmaps_to_keypoints(torch.from_numpy(maps).cuda(), rois)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    np.testing.assert_array_equal(got[:, :2], want[:, :2])
    np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[:, 3], want[:, 3], rtol=1e-5)


@pytest.mark.cuda
def test_im_detect_all_decodes_each_images_keypoints_on_the_gpu(coco_mini, monkeypatch):
    """im_detect_all_batch on a CUDA Keypoint R-CNN: the keypoints it returns are the host loop's
    decoding of the heatmaps the network gave, image by image, in the boxes' order."""
    import glob
    import os
    from pydetectron.core import test as test_mod
    from pydetectron.core.config import (
        assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list, reset_cfg)
    from pydetectron.modeling.model_builder import Generalized_RCNN
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    reset_cfg()
    try:
        merge_cfg_from_file(os.path.join(root, 'configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml'))
        merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'TEST.SCALE', 400,
                             'TEST.MAX_SIZE', 667, 'TEST.SCORE_THRESH', 0.0,
                             'TEST.DETECTIONS_PER_IM', 30, 'TEST.IMS_PER_BATCH', 2])
        assert_and_infer_cfg()
        torch.manual_seed(0)
        model = Generalized_RCNN().cuda().eval()
        paths = sorted(glob.glob(os.path.join(coco_mini, 'images', 'val2017', '*.jpg')))[:2]
        ims = [cv2.imread(p) for p in paths]
        seen = []
        plain = test_mod.im_detect_keypoints

        def record(*args):
            hms = plain(*args)
            seen.append([h.cpu().numpy() for h in hms])
            return hms
        monkeypatch.setattr(test_mod, 'im_detect_keypoints', record)
        results = test_mod.im_detect_all_batch(model, ims)
        person = 1
        for i, (cls_boxes, _, cls_keyps) in enumerate(results):
            want = keypoint_utils.heatmaps_to_keypoints(
                seen[0][i], cls_boxes[person][:, :4], cfg.KRCNN.INFERENCE_MIN_SIZE)
            got = np.stack(cls_keyps[person])
            assert got.shape == want.shape and got.shape[0] > 0
            # random weights give flat heatmaps: near-ties may pick another cell, rarely
            same = (got[:, :2] == want[:, :2]).all(axis=1).mean()
            assert same >= 0.95, same
            np.testing.assert_allclose(got[:, 3], want[:, 3], rtol=1e-4)
    finally:
        reset_cfg()
