"""core.mask_results: Detectron's mask pasting and RLE encoding as batched tensor work, checked
against Detectron's per-mask loop written out here (cv2.resize, threshold, pycocotools.encode)."""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from pydetectron.core import mask_results

M = 28


def _detectron_segms(cls_boxes, masks, im_h, im_w, thresh=0.5):
    """Detectron's segm_results (class-specific masks) transcribed: expand the float32 boxes by
    (M + 2) / M about their centres, truncate, resize the one-cell-padded mask to the box with
    cv2, threshold, place it in the image and encode it with pycocotools."""
    scale = (M + 2.0) / M
    out, k = [[]], 0
    for j in range(1, len(cls_boxes)):
        segms = []
        for row in cls_boxes[j]:
            b = row[:4].astype(np.float32)
            w_half = (b[2] - b[0]) * np.float32(0.5) * np.float32(scale)
            h_half = (b[3] - b[1]) * np.float32(0.5) * np.float32(scale)
            x_c = (b[2] + b[0]) * np.float32(0.5)
            y_c = (b[3] + b[1]) * np.float32(0.5)
            x0, y0, x1, y1 = np.array([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half],
                                      dtype=np.float32).astype(np.int32)
            padded = np.zeros((M + 2, M + 2), np.float32)
            padded[1:-1, 1:-1] = masks[k, j]
            w, h = max(int(x1 - x0 + 1), 1), max(int(y1 - y0 + 1), 1)
            resized = (cv2.resize(padded, (w, h)) > thresh).astype(np.uint8)
            im_mask = np.zeros((im_h, im_w), np.uint8)
            xa, xb = max(x0, 0), min(x1 + 1, im_w)
            ya, yb = max(y0, 0), min(y1 + 1, im_h)
            if xb > xa and yb > ya:
                im_mask[ya:yb, xa:xb] = resized[ya - y0:yb - y0, xa - x0:xb - x0]
            segms.append(mask_util.encode(np.asfortranarray(im_mask[:, :, None]))[0])
            k += 1
        out.append(segms)
    return out


def _case(seed, num_dets, im_h, im_w, num_classes=5):
    """Detections of every size (1 px to larger than the image, crossing each border, the exact
    half-size 15 x 15 that cv2 resizes by area averaging) with smooth soft masks, whose 0.5 level
    crosses many pixels."""
    rng = np.random.RandomState(seed)
    x1 = rng.uniform(-40, im_w - 2, num_dets)
    y1 = rng.uniform(-40, im_h - 2, num_dets)
    bw = np.exp(rng.uniform(0, np.log(1.5 * im_w), num_dets))
    bh = np.exp(rng.uniform(0, np.log(1.5 * im_h), num_dets))
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)
    boxes[:3] = [[10, 10, 22.6, 22.6], [0, 0, 0, 0], [im_w - 1, im_h - 1, im_w - 1, im_h - 1]]
    yy, xx = np.mgrid[0:M, 0:M]
    cx, cy, s = rng.uniform(4, 24, (3, num_dets, num_classes, 1, 1))
    masks = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (3 + s * 0.4) ** 2))
    masks = masks.astype(np.float32)
    classes = np.sort(rng.randint(1, num_classes, num_dets))
    boxes = boxes[np.argsort(rng.rand(num_dets))]
    cls_boxes = [[]] + [np.hstack((boxes[classes == j], np.ones(((classes == j).sum(), 1),
                                                                 np.float32)))
                        for j in range(1, num_classes)]
    ref = np.vstack([cls_boxes[j][:, :4] for j in range(1, num_classes)])
    return cls_boxes, masks, ref


@pytest.fixture(params=['op', 'products'])
def pasting(request, monkeypatch):
    """Both ways of pasting: the built op (ops.paste_masks_in_image) and the batched matrix
    products that stand in for it without the extension."""
    if request.param == 'op':
        if not mask_results.paste_mask_op.has_kernel_for('cpu'):
            pytest.skip('needs the built extension')
    else:
        monkeypatch.setattr(mask_results.paste_mask_op, 'has_kernel_for', lambda device: False)
    return request.param


@pytest.mark.parametrize('seed, im_h, im_w', [(0, 427, 640), (1, 640, 480), (2, 57, 33)])
def test_segm_results_equal_detectrons_loop(seed, im_h, im_w, pasting):
    cls_boxes, masks, ref = _case(seed, 60, im_h, im_w)
    expected = _detectron_segms(cls_boxes, masks, im_h, im_w)
    got = mask_results.segm_results(cls_boxes, masks, ref, im_h, im_w, M, cls_specific=True)
    assert [len(s) for s in got] == [len(s) for s in expected]
    for j in range(1, len(expected)):
        for a, b in zip(got[j], expected[j]):
            assert a['size'] == b['size'] == [im_h, im_w]
            assert a['counts'] == b['counts']          # the same RLE string, bit for bit


def test_class_agnostic_masks_use_channel_zero():
    cls_boxes, masks, ref = _case(3, 20, 200, 300)
    agnostic = masks.copy()
    agnostic[:, 0] = masks[np.arange(20), np.repeat(np.arange(1, 5),
                                                    [len(cls_boxes[j]) for j in range(1, 5)])]
    agnostic[:, 1:] = 0.0      # the other channels would paste nothing
    got = mask_results.segm_results(cls_boxes, agnostic[:, :1], ref, 200, 300, M,
                                    cls_specific=False)
    expected = _detectron_segms(cls_boxes, masks, 200, 300)
    assert all(a['counts'] == b['counts'] for j in range(1, 5) for a, b in zip(got[j], expected[j]))


def test_a_box_that_detectrons_slices_leave_empty_pastes_nothing(pasting):
    # x1 < x0 after the expansion (a decoded box narrower than a pixel): w is taken as 1 for the
    # resize, but Detectron's slice x0:x1 + 1 of the image is empty
    boxes = np.array([[10, 5, 9, 20], [3, 8, 12, 7], [4, 4, 4, 4]], np.int64)
    masks = torch.ones((3, M, M))
    got = mask_results.paste_masks(masks, boxes, 30, 30)
    assert got.shape == (3, 30, 30)
    assert not got[0].any() and not got[1].any()
    assert got[2].sum() == 1 and got[2, 4, 4]


def test_threshold_is_strictly_greater():
    cls_boxes = [[], np.array([[0, 0, 27, 27, 1]], np.float32)]
    masks = np.full((1, 2, M, M), 0.5, np.float32)
    got = mask_results.segm_results(cls_boxes, masks, cls_boxes[1][:, :4], 40, 40, M, True)
    assert mask_util.decode(got[1][0]).sum() == 0      # 0.5 is not > 0.5
    masks[0, 1, 3, 4] = 0.50001
    got = mask_results.segm_results(cls_boxes, masks, cls_boxes[1][:, :4], 40, 40, M, True)
    assert mask_util.decode(got[1][0]).sum() > 0


@pytest.fixture(params=['op', 'pycocotools'])
def encoding(request, monkeypatch):
    """Both ways of writing the strings: the built op (ops.rle_from_changes) and run lengths
    handed to pycocotools, without the extension."""
    if request.param == 'op':
        if not mask_results.rle_op.has_kernel():
            pytest.skip('needs the built extension')
    else:
        monkeypatch.setattr(mask_results.rle_op, 'has_kernel', lambda: False)
    return request.param


@pytest.mark.parametrize('h, w', [(1, 1), (5, 7), (64, 48)])
def test_encode_masks_equals_pycocotools(h, w, encoding):
    rng = np.random.RandomState(h * w)
    binary = rng.rand(6, h, w) > 0.5
    binary[0] = False
    binary[1] = True
    binary[2] = False
    binary[2, 0, 0] = True                              # RLE starting with a run of ones
    got = mask_results.encode_masks(torch.from_numpy(binary))
    for b, g in zip(binary, got):
        expected = mask_util.encode(np.asfortranarray(b[:, :, None].astype(np.uint8)))[0]
        assert g['size'] == expected['size'] and g['counts'] == expected['counts']
    assert mask_results.encode_masks(torch.zeros((0, h, w), dtype=torch.bool)) == []


def test_encode_masks_equals_pycocotools_on_random_batches(encoding):
    """Batches of 1 to 5 masks of 1 to 8 pixels a side, sparse to dense, all-zero and all-one:
    the runs of all the masks are cut apart in one pass, so each mask's neighbours matter."""
    rng = np.random.RandomState(0)
    for trial in range(200):
        d, h, w = rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 9)
        binary = rng.rand(d, h, w) > rng.rand()
        if trial % 7 == 0:
            binary[rng.randint(d)] = False
        if trial % 11 == 0:
            binary[rng.randint(d)] = True
        got = mask_results.encode_masks(torch.from_numpy(binary))
        want = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
        assert got == want, trial


def test_count_mismatch_is_refused():
    cls_boxes = [[], np.array([[0, 0, 5, 5, 1]], np.float32)]
    with pytest.raises(ValueError, match='2 masks for 1 boxes'):
        mask_results.segm_results(cls_boxes, np.zeros((2, 1, M, M), np.float32),
                                  cls_boxes[1][:, :4], 10, 10, M, False)


@pytest.mark.cuda
def test_on_the_gpu_equals_detectrons_loop():
    """The same products on CUDA (no TF32): every RLE string equal to Detectron's loop here too,
    or -- where the GPU fuses a multiply-add -- only pixels within a float32 step of the
    threshold may differ: at most 2 per million pixels of the images."""
    torch.backends.cuda.matmul.allow_tf32 = True       # must be ignored by the pasting
    try:
        differing = total = 0
        for seed, (im_h, im_w) in enumerate([(427, 640), (640, 480), (800, 1199)]):
            cls_boxes, masks, ref = _case(seed, 100, im_h, im_w)
            expected = _detectron_segms(cls_boxes, masks, im_h, im_w)
            got = mask_results.segm_results(cls_boxes, torch.from_numpy(masks).cuda(), ref,
                                            im_h, im_w, M, cls_specific=True)
            for j in range(1, len(expected)):
                for a, b in zip(got[j], expected[j]):
                    differing += int((mask_util.decode(a) != mask_util.decode(b)).sum())
                    total += im_h * im_w
        print('GPU pasting: %d of %d pixels differ from cv2' % (differing, total))
        assert differing <= 2e-6 * total
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_tf32_is_off_while_any_thread_pastes_and_restored_after_the_last():
    """Two test_net threads paste masks at once: the user's TF32 setting comes back only when
    both are done (a save/restore per call would leave it off), and TF32 off stays off."""
    flag = torch.backends.cuda.matmul
    saved = flag.allow_tf32
    try:
        for user in (True, False):
            flag.allow_tf32 = user
            a, b = mask_results._NoTF32(), mask_results._NoTF32()
            a.__enter__()
            assert flag.allow_tf32 is False
            b.__enter__()
            a.__exit__(None, None, None)
            assert flag.allow_tf32 is False                  # b is still inside
            b.__exit__(None, None, None)
            assert flag.allow_tf32 is user
    finally:
        flag.allow_tf32 = saved
