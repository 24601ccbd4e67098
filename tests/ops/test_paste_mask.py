"""ops.paste_masks_in_image against Detectron's per-mask loop written out here (cv2.resize of the
one-cell-padded mask to the box, threshold, the image slices), and CUDA against the CPU."""
import cv2
import numpy as np
import pytest
import torch

from pydetectron.ops import paste_masks_in_image
from ops_test_utils import cuda_kernels_available, needs_ext

pytestmark = needs_ext
M = 28


def detectron_paste(masks, boxes, im_h, im_w, thresh=0.5):
    out = np.zeros((len(masks), im_h, im_w), bool)
    padded = np.zeros((M + 2, M + 2), np.float32)
    for d, (mask, b) in enumerate(zip(masks, boxes)):
        padded[1:-1, 1:-1] = mask
        w, h = max(int(b[2] - b[0] + 1), 1), max(int(b[3] - b[1] + 1), 1)
        resized = cv2.resize(padded, (w, h)) > thresh
        xa, xb = max(b[0], 0), min(b[2] + 1, im_w)
        ya, yb = max(b[1], 0), min(b[3] + 1, im_h)
        if xb > xa and yb > ya:
            out[d, ya:yb, xa:xb] = resized[ya - b[1]:yb - b[1], xa - b[0]:xb - b[0]]
    return out


def random_case(rng, d, im_h, im_w):
    """Smooth soft masks (their 0.5 level crosses many pixels) and int boxes of every size:
    inside, across each border, outside, one pixel, degenerate (x1 < x0), larger than the
    image."""
    yy, xx = np.mgrid[0:M, 0:M]
    cx, cy, s = rng.uniform(2, 26, (3, d, 1, 1))
    masks = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (2 + s * 0.5) ** 2))
    x0 = rng.randint(-60, im_w + 20, d)
    y0 = rng.randint(-60, im_h + 20, d)
    w = np.exp(rng.uniform(0, np.log(2 * max(im_w, im_h)), d)).astype(np.int64) - 2
    h = np.exp(rng.uniform(0, np.log(2 * max(im_w, im_h)), d)).astype(np.int64) - 2
    boxes = np.stack([x0, y0, x0 + w, y0 + h], 1).astype(np.int64)
    return masks.astype(np.float32), boxes


@pytest.mark.parametrize("seed, im_h, im_w", [(0, 427, 640), (1, 640, 480), (2, 33, 57)])
def test_equals_detectrons_loop(seed, im_h, im_w):
    rng = np.random.RandomState(seed)
    masks, boxes = random_case(rng, 120, im_h, im_w)
    got = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), im_h, im_w)
    assert got.shape == (120, im_h, im_w) and got.dtype == torch.bool
    expected = detectron_paste(masks, boxes, im_h, im_w)
    differing = int((got.numpy() != expected).sum())
    # cv2's resize rounds in its own way: a pixel within a rounding step of the threshold may
    # differ (measured: 3 in 126 million); these smooth masks give none
    assert differing == 0, differing


def test_layout_is_column_major_per_mask():
    masks = torch.rand(4, M, M)
    boxes = torch.tensor([[0, 0, 9, 19], [5, 5, 30, 12], [-4, 3, 3, 40], [2, 2, 2, 2]])
    got = paste_masks_in_image(masks, boxes, 21, 33)
    assert got.shape == (4, 21, 33) and got.stride() == (21 * 33, 1, 21)
    assert got.transpose(1, 2).is_contiguous()


def test_threshold_empty_and_arguments():
    boxes = torch.tensor([[0, 0, 27, 27]])
    half = torch.full((1, M, M), 0.5)
    assert not paste_masks_in_image(half, boxes, 40, 40, 0.5).any()     # strictly greater
    lower = paste_masks_in_image(half, boxes, 40, 40, 0.4999)
    assert lower.sum() == 26 * 26          # the zero border's interpolation stays below
    assert np.array_equal(lower.numpy(), detectron_paste(half.numpy(), boxes.numpy(), 40, 40,
                                                         0.4999))
    assert paste_masks_in_image(torch.zeros(0, M, M), torch.zeros(0, 4, dtype=torch.long),
                                5, 7).shape == (0, 5, 7)
    assert paste_masks_in_image(half, boxes, 0, 7).shape == (1, 0, 7)
    with pytest.raises(TypeError, match="`masks` must be float32"):
        paste_masks_in_image(half.double(), boxes, 40, 40)
    with pytest.raises(TypeError, match="`boxes` must be int64"):
        paste_masks_in_image(half, boxes.float(), 40, 40)
    with pytest.raises(ValueError, match=r"`boxes` must have shape \(D, 4\)"):
        paste_masks_in_image(half, boxes[:, :3], 40, 40)
    with pytest.raises(ValueError, match=r"`masks` must have shape \(D, M, M\)"):
        paste_masks_in_image(torch.zeros(1, M, M - 1), boxes, 40, 40)
    with pytest.raises(ValueError, match="`height` must be an int >= 0"):
        paste_masks_in_image(half, boxes, -1, 40)
    with pytest.raises(RuntimeError, match="`boxes` must have shape"):
        torch.ops.pydetectron.paste_masks_in_image(half, boxes[:, :3], 40, 40, 0.5)


cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("seed, im_h, im_w", [(0, 427, 640), (3, 800, 1199), (4, 1, 1)])
def test_cuda_equals_cpu_bit_for_bit_without_host_sync(seed, im_h, im_w):
    rng = np.random.RandomState(seed)
    masks, boxes = random_case(rng, 100, im_h, im_w)
    masks = torch.from_numpy(masks) * torch.from_numpy(rng.rand(100, 1, 1).astype(np.float32))
    boxes = torch.from_numpy(boxes)
    expected = paste_masks_in_image(masks, boxes, im_h, im_w, 0.3)
    m, b = masks.cuda(), boxes.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = paste_masks_in_image(m, b, im_h, im_w, 0.3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.device.type == "cuda" and got.stride() == expected.stride()
    assert torch.equal(got.cpu(), expected)
