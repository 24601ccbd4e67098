"""box_iou_batched (the training targets' batched box IoU / IoA in one op) against the pure-torch
overlaps it replaces (``modeling/targets/overlaps.py``): the same bits on random and hand-made
boxes in every broadcast form, hand-computed values, clear errors, the targets unchanged with the
op, CPU/CUDA parity and no host synchronisation on CUDA."""
import math
import os
import sys

import numpy as np
import pytest
import torch

from ops_test_utils import cuda_kernels_available, needs_ext
from pydetectron import ops
from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import shifted_anchors
from pydetectron.modeling.targets import (
    label_proposals, mask_rcnn_targets, pack_gt, pack_polygons, rpn_anchor_targets_flat,
    sample_rois)
from pydetectron.modeling.targets import overlaps
from pydetectron.ops import box_iou_batched

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'modeling', 'targets'))
from _params import fast_rcnn_params, rpn_params  # noqa: E402  (the target tests' settings)

pytestmark = [needs_ext, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")

DTYPES = [torch.float32, torch.float64]


def reference(boxes, query_boxes, over_first_area=False):
    """The pure-torch overlaps (broadcast over the batch) that the op must reproduce."""
    fn = overlaps.box_ioa_torch if over_first_area else overlaps.box_iou_torch
    return fn(boxes, query_boxes)


def random_boxes(shape, generator, dtype, integer=False, image=60.):
    """(*shape, 4) boxes mixing the cases that matter: ordinary, degenerate (x2 < x1 or
    y2 < y1), zero-width (x2 == x1: width 1), copies of each other, touching neighbours."""
    xy = torch.rand(shape + (2,), generator=generator, dtype=torch.float64) * image
    wh = torch.rand(shape + (2,), generator=generator, dtype=torch.float64) * image / 2 - 3
    boxes = torch.cat([xy, xy + wh], dim=-1)
    if integer:
        boxes = boxes.round()
    flat = boxes.view(-1, 4)
    n = flat.shape[0]
    if n >= 8:
        pick = torch.randperm(n, generator=generator)
        flat[pick[0]] = flat[pick[1]]                         # identical boxes
        flat[pick[2], 0] = flat[pick[3], 2]                   # touching by one pixel column
        flat[pick[2], 2] = flat[pick[2], 0] + 5
        flat[pick[4], 2] = flat[pick[4], 0]                   # width exactly 1
        flat[pick[5], 2:] = flat[pick[5], :2] - 2             # degenerate: x2 < x1, y2 < y1
    return boxes.to(dtype)


def case_boxes(dtype):
    """Hand-made pairs (boxes (1, 6, 4) x query (1, 6, 4)) around the +1 convention."""
    b = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9],
                      [3.5, 2.25, 7.75, 9.5], [5, 5, 4, 4]], dtype=dtype)
    q = torch.tensor([[5, 5, 14, 14], [9, 0, 18, 9], [10, 0, 19, 9], [0, 0, 9, 9],
                      [1.5, 4, 6.25, 12], [0, 0, 9, 9]], dtype=dtype)
    return b.unsqueeze(0), q.unsqueeze(0)


@pytest.mark.parametrize('dtype', DTYPES)
def test_hand_computed_values(dtype):
    b, q = case_boxes(dtype)
    iou = box_iou_batched(b, q)[0].diagonal()
    ioa = box_iou_batched(b, q, True)[0].diagonal()
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    # (0,0,9,9) vs (5,5,14,14): 5 x 5 pixels shared, areas 100 + 100 - 25
    # (0,0,9,9) vs (9,0,18,9): one shared column, 1 x 10; union 190
    # (0,0,9,9) vs (10,0,19,9): adjacent, no shared pixel; identical boxes: 1
    # (3.5,2.25,7.75,9.5) vs (1.5,4,6.25,12): iw = 6.25 - 3.5 + 1 = 3.75, ih = 9.5 - 4 + 1 = 6.5,
    #   inter 24.375, areas 5.25 * 8.25 = 43.3125 and 5.75 * 9 = 51.75 (all exact in binary)
    # (5,5,4,4) (degenerate: width 0) vs (0,0,9,9): iw = 4 - 5 + 1 = 0 -> 0
    expected_iou = [t(25.) / t(175.), t(10.) / t(190.), t(0.), t(1.),
                    t(24.375) / t(43.3125 + 51.75 - 24.375), t(0.)]
    expected_ioa = [t(0.25), t(10.) / t(100.), t(0.), t(1.), t(24.375) / t(43.3125), t(0.)]
    assert torch.equal(iou, torch.stack(expected_iou))
    assert torch.equal(ioa, torch.stack(expected_ioa))
    assert iou[0].item() == pytest.approx(1 / 7) and iou[1].item() == pytest.approx(1 / 19)
    assert torch.equal(box_iou_batched(b, q), reference(b, q))
    assert torch.equal(box_iou_batched(b, q, True), reference(b, q, True))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('integer', [True, False])
@pytest.mark.parametrize('b1,b2', [(3, 3), (1, 3), (3, 1), (1, 1)])
@pytest.mark.parametrize('over_first_area', [False, True])
def test_random_boxes_equal_the_torch_path(dtype, integer, b1, b2, over_first_area):
    g = torch.Generator().manual_seed(1000 * b1 + 10 * b2 + integer)
    values = []
    for n, k in [(37, 23), (1, 50), (64, 1)]:
        boxes = random_boxes((b1, n), g, dtype, integer)
        query = random_boxes((b2, k), g, dtype, integer)
        out = box_iou_batched(boxes, query, over_first_area)
        assert out.shape == (max(b1, b2), n, k) and out.dtype == dtype
        ref = reference(boxes, query, over_first_area)
        assert torch.equal(out, ref)
        values.append(out.flatten())
    values = torch.cat(values)
    assert (values > 0).sum() > 20 and (values == 0).sum() > 20   # the boxes overlap and miss


def test_query_boxes_against_themselves_and_large_coordinates():
    g = torch.Generator().manual_seed(3)
    for dtype in DTYPES:
        boxes = random_boxes((2, 40), g, dtype) * 37.3 + 1000.   # fractional, rounding matters
        out = box_iou_batched(boxes, boxes)
        assert torch.equal(out, reference(boxes, boxes))
        d = out.diagonal(dim1=1, dim2=2)
        valid = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
        assert torch.equal(d[valid], torch.ones_like(d[valid]))
        assert torch.equal(box_iou_batched(boxes, boxes, True), reference(boxes, boxes, True))


def test_nan_and_inf_coordinates_follow_torch():
    b = torch.tensor([[[0, 0, 9, 9], [float('nan'), 0, 9, 9], [0, 0, float('inf'), 9],
                       [-float('inf'), 0, 9, 9]]])
    q = torch.tensor([[[0, 0, 9, 9], [2, 2, float('nan'), 5], [0, 0, float('inf'), 9]]])
    for ioa in (False, True):
        out = box_iou_batched(b, q, ioa)
        ref = reference(b, q, ioa)
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(torch.nan_to_num(out, nan=7.), torch.nan_to_num(ref, nan=7.))
    # a NaN coordinate on either side gives 0 (its intersection is NaN, not > 0)
    assert box_iou_batched(b, q)[0, 1].eq(0).all() and box_iou_batched(b, q)[0, :, 1].eq(0).all()


@pytest.mark.parametrize('dtype', DTYPES)
def test_non_contiguous_inputs(dtype):
    g = torch.Generator().manual_seed(4)
    boxes = random_boxes((12, 3), g, dtype).transpose(0, 1)           # (3, 12, 4), strided
    query = random_boxes((9, 2), g, dtype)[:, 0].unsqueeze(0)          # (1, 9, 4), row stride 8
    assert not boxes.is_contiguous() and not query.is_contiguous()
    for ioa in (False, True):
        out = box_iou_batched(boxes, query, ioa)
        assert torch.equal(out, reference(boxes.contiguous(), query.contiguous(), ioa))
    expanded = query.expand(3, 9, 4)                                   # batch stride 0
    assert torch.equal(box_iou_batched(boxes, expanded), reference(boxes, query))


@pytest.mark.parametrize('shapes,out_shape', [
    (((2, 0, 4), (2, 5, 4)), (2, 0, 5)),
    (((2, 5, 4), (2, 0, 4)), (2, 5, 0)),
    (((0, 5, 4), (0, 3, 4)), (0, 5, 3)),
    (((1, 5, 4), (0, 3, 4)), (0, 5, 3)),
    (((0, 5, 4), (1, 3, 4)), (0, 5, 3)),
    (((1, 0, 4), (1, 0, 4)), (1, 0, 0)),
])
def test_empty_sizes_give_empty_outputs(shapes, out_shape):
    for dtype in DTYPES:
        a, q = (torch.zeros(s, dtype=dtype) for s in shapes)
        for ioa in (False, True):
            out = box_iou_batched(a, q, ioa)
            assert out.shape == out_shape and out.dtype == dtype
            assert out.shape == reference(a, q, ioa).shape


def test_bad_inputs_raise_clear_errors():
    good = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"`boxes` must have shape \(B1, N, 4\).*got \(3, 4\)"):
        box_iou_batched(torch.zeros(3, 4), good)
    with pytest.raises(ValueError, match=r"`query_boxes` must have shape \(B2, K, 4\).*got "
                                         r"\(2, 3, 5\)"):
        box_iou_batched(good, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"batch sizes of `boxes` \(2\) and `query_boxes` \(3\)"):
        box_iou_batched(good, torch.zeros(3, 3, 4))
    with pytest.raises(TypeError, match=r"`boxes` must be float32 or float64, got torch.int64"):
        box_iou_batched(good.long(), good)
    with pytest.raises(TypeError, match=r"`query_boxes` must be float32 or float64, got "
                                        r"torch.float16"):
        box_iou_batched(good, good.half())
    with pytest.raises(TypeError, match=r"`query_boxes` \(torch.float64\) must have the dtype of "
                                        r"`boxes` \(torch.float32\)"):
        box_iou_batched(good, good.double())
    with pytest.raises(ValueError, match=r"`query_boxes` is on meta but `boxes` is on cpu"):
        box_iou_batched(good, good.to('meta'))
    with pytest.raises(TypeError, match=r"`over_first_area` must be a bool"):
        box_iou_batched(good, good, 1)
    with pytest.raises(TypeError, match=r"`boxes` must be a tensor"):
        box_iou_batched([[0, 0, 1, 1]], good)
    with pytest.raises(RuntimeError, match="not differentiable"):
        box_iou_batched(good.clone().requires_grad_(), good)
    with torch.no_grad():   # no graph to build: allowed
        assert box_iou_batched(good.clone().requires_grad_(), good).shape == (2, 3, 3)
    # The C++ checks (reached through torch.ops directly) say the same.
    op = torch.ops.pydetectron.box_iou_batched
    with pytest.raises(RuntimeError, match=r"`boxes` must have shape \(B1, N, 4\).*got \[3, 4\]"):
        op(torch.zeros(3, 4), good, False)
    with pytest.raises(RuntimeError, match=r"`query_boxes` must be float32 or float64, got Int"):
        op(good, good.int(), False)
    with pytest.raises(RuntimeError, match=r"`query_boxes` \(Double\) must have the dtype of "
                                           r"`boxes` \(Float\)"):
        op(good, good.double(), False)
    with pytest.raises(RuntimeError, match=r"batch sizes of `boxes` \(2\) and `query_boxes` "
                                           r"\(3\) must be equal or one of them 1"):
        op(good, torch.zeros(3, 1, 4), False)


def test_fake_kernel_gives_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        a = mode.from_tensor(torch.zeros(1, 7, 4, dtype=torch.float64))
        q = mode.from_tensor(torch.zeros(5, 3, 4, dtype=torch.float64))
        out = torch.ops.pydetectron.box_iou_batched(a, q, True)
    assert out.shape == (5, 7, 3) and out.dtype == torch.float64


# -- overlaps.box_iou / box_ioa: the op where it applies, the torch path otherwise -------------

@pytest.fixture
def op_calls(monkeypatch):
    calls = []
    real = ops.box_iou_batched
    monkeypatch.setattr(ops, 'box_iou_batched',
                        lambda *a: calls.append(tuple(t.shape for t in a[:2])) or real(*a))
    return calls


@pytest.mark.parametrize('shapes', [
    ((1, 30, 4), (3, 7, 4)),      # RPN: anchors of all images against each image's gt
    ((9, 1, 4), (9, 7, 4)),       # Fast / Mask R-CNN: one box per row against its image's gt
    ((3, 30, 4), (3, 7, 4)),
    ((30, 4), (7, 4)),            # 2-D: one pair of box sets
    ((30, 4), (3, 7, 4)),         # mixed
    ((2, 3, 30, 4), (7, 4)),      # more batch dims: flattened for the op
    ((2, 3, 30, 4), (1, 1, 7, 4)),
    ((2, 3, 30, 4), (2, 3, 7, 4)),
])
def test_overlaps_use_the_op_and_give_the_same_bits(shapes, op_calls):
    g = torch.Generator().manual_seed(len(shapes[0]) * 10 + len(shapes[1]))
    for dtype in DTYPES:
        a = random_boxes(shapes[0][:-1], g, dtype)
        q = random_boxes(shapes[1][:-1], g, dtype)
        for fn, ref in [(overlaps.box_iou, overlaps.box_iou_torch),
                        (overlaps.box_ioa, overlaps.box_ioa_torch)]:
            n = len(op_calls)
            out = fn(a, q)
            assert len(op_calls) == n + 1
            assert all(len(s) == 3 for s in op_calls[-1])
            expected = ref(a, q)
            assert out.shape == expected.shape and torch.equal(out, expected)


def test_overlaps_fall_back_to_torch_where_the_op_does_not_apply(op_calls):
    g = torch.Generator().manual_seed(8)
    a = random_boxes((2, 10), g, torch.float32)
    q = random_boxes((2, 6), g, torch.float32)
    cases = [
        (a.clone().requires_grad_(), q),                 # gradients needed
        (a, q.double()),                                 # mixed dtypes (torch promotes)
        (a.half(), q.half()),                            # no half kernel
        (a.view(2, 1, 10, 4), q.view(1, 2, 6, 4)),       # batch (2, 1) x (1, 2): partly broadcast
    ]
    for x, y in cases:
        for fn, ref in [(overlaps.box_iou, overlaps.box_iou_torch),
                        (overlaps.box_ioa, overlaps.box_ioa_torch)]:
            out = fn(x, y)
            assert torch.equal(out, ref(x, y))
    assert op_calls == []
    # the differentiable fallback still gives gradients
    x = a.clone().requires_grad_()
    overlaps.box_iou(x, q).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_overlaps_without_the_extension_use_torch(op_calls, monkeypatch):
    monkeypatch.setattr(ops, 'extension_available', lambda: False)
    g = torch.Generator().manual_seed(9)
    a, q = random_boxes((1, 10), g, torch.float32), random_boxes((2, 6), g, torch.float32)
    assert torch.equal(overlaps.box_iou(a, q), overlaps.box_iou_torch(a, q))
    assert op_calls == []


# -- the training targets: identical with the op and without it --------------------------------

def _synthetic_batch(seed, scales=(0.8, 1.37)):
    """Loader-style ground truth (boxes, classes, crowd, polygons in blob scale) and im_info for
    two images, a crowd region in the first."""
    rng = np.random.RandomState(seed)
    roidb, info = [], []
    for i, s in enumerate(scales):
        h, w = 480 * s, 640 * s
        g = 6 + 3 * i
        x1, y1 = rng.uniform(0, w * 0.7, g), rng.uniform(0, h * 0.7, g)
        bw, bh = rng.uniform(12, w * 0.4, g), rng.uniform(12, h * 0.4, g)
        boxes = np.stack([x1, y1, np.minimum(x1 + bw, w - 1), np.minimum(y1 + bh, h - 1)], 1)
        boxes = boxes.astype(np.float32)
        crowd = np.zeros(g, bool)
        if i == 0:
            crowd[1] = True
        segms = []
        for b, c in zip(boxes, crowd):
            if c:
                segms.append({'counts': [0], 'size': [int(h), int(w)]})
                continue
            n = rng.randint(3, 9)
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            rx, ry = (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
            segms.append([np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)
                          .reshape(-1).astype(np.float32)])
        roidb.append({'boxes': torch.from_numpy(boxes),
                      'gt_classes': torch.from_numpy(rng.randint(1, 81, g).astype(np.int64)),
                      'is_crowd': torch.from_numpy(crowd), 'segms': segms})
        info.append([round(h), round(w), s])
    return roidb, torch.tensor(info, dtype=torch.float32)


def _proposals(roidb, rng, per_gt=8, n_random=40):
    rows = []
    for i, d in enumerate(roidb):
        for b in d['boxes'].numpy():
            bw, bh = b[2] - b[0] + 1, b[3] - b[1] + 1
            jit = rng.uniform(-0.35, 0.35, (per_gt, 4)) * np.array([bw, bh, bw, bh])
            rows.append(np.hstack([np.full((per_gt, 1), i), b[None] + jit]))
        x1, y1 = rng.uniform(0, 400, n_random), rng.uniform(0, 300, n_random)
        rows.append(np.stack([np.full(n_random, i), x1, y1, x1 + rng.uniform(5, 200, n_random),
                              y1 + rng.uniform(5, 200, n_random)], 1))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def _with_and_without_op(monkeypatch, op_calls, fn):
    """fn() with the op, then with extension_available patched False (the pure-torch path)."""
    with_op = fn()
    n = len(op_calls)
    assert n > 0
    monkeypatch.setattr(ops, 'extension_available', lambda: False)
    without = fn()
    assert len(op_calls) == n
    return with_op, without


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_rpn_targets_identical_with_the_op(monkeypatch, op_calls):
    roidb, im_info = _synthetic_batch(0)
    gt = pack_gt(roidb, 'cpu')
    anchors, sizes = [], []
    for lvl in range(2, 7):
        stride = 2 ** lvl
        cell = torch.as_tensor(generate_anchors(stride, (32 * 2 ** (lvl - 2),), (0.5, 1, 2)),
                               dtype=torch.float32)
        H = int(math.ceil(im_info[:, 0].max().item() / stride))
        W = int(math.ceil(im_info[:, 1].max().item() / stride))
        anchors.append(shifted_anchors(cell, H, W, stride))
        sizes.append((H, W))

    def run():
        return rpn_anchor_targets_flat(anchors, sizes, gt, im_info, rpn_params(),
                                       generator=torch.Generator().manual_seed(5))
    with_op, without = _with_and_without_op(monkeypatch, op_calls, run)
    assert op_calls[0][0][0] == 1 and op_calls[0][1][0] == 2      # (1, T, 4) x (N, G, 4)
    _assert_same(with_op, without)
    assert (with_op['labels'] == 1).any() and (with_op['labels'] == 0).any()


@pytest.mark.parametrize('crowd_thresh', [0., 0.7])
def test_label_proposals_identical_with_the_op(monkeypatch, op_calls, crowd_thresh):
    roidb, im_info = _synthetic_batch(1)
    gt = pack_gt(roidb, 'cpu')
    rois = _proposals(roidb, np.random.RandomState(2))

    def run():
        return label_proposals(rois, gt, im_info,
                               fast_rcnn_params(crowd_filter_thresh=crowd_thresh, bbox_thresh=0.5,
                               bbox_reg_weights=(10., 10., 5., 5.), cls_agnostic_bbox_reg=False))
    with_op, without = _with_and_without_op(monkeypatch, op_calls, run)
    assert len(op_calls) == (2 if crowd_thresh > 0 else 1)           # IoU (+ IoA for crowds)
    assert op_calls[0][0][1] == 1                                     # (C, 1, 4) x (C, G, 4)
    _assert_same(with_op, without)
    mo = with_op.max_overlaps
    assert ((mo > 0.5) & (mo < 1)).any() and (mo == -1).any()


def test_mask_targets_identical_with_the_op(monkeypatch, op_calls):
    roidb, im_info = _synthetic_batch(3)
    gt = pack_gt(roidb, 'cpu')
    G = gt.valid.shape[1]
    polys = pack_polygons(roidb, G, 'cpu')
    rois = _proposals(roidb, np.random.RandomState(4))
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=0.))
    blobs = sample_rois(lab, 2, fast_rcnn_params(batch_size_per_im=64, num_classes=81),
                        generator=torch.Generator().manual_seed(0))
    op_calls.clear()

    def run():
        return mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], polys, gt, im_info,
                                 resolution=28)
    with_op, without = _with_and_without_op(monkeypatch, op_calls, run)
    assert len(op_calls) == 1 and op_calls[0][0][1] == 1              # (R_m, 1, 4) x (R_m, G, 4)
    _assert_same(with_op, without)
    masks = with_op['masks_int32']
    assert (masks == 1).any() and (masks == 0).any()


# -- CUDA ------------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('integer', [True, False])
def test_cuda_equals_cpu(dtype, integer):
    g = torch.Generator().manual_seed(11)
    for b1, b2, n, k in [(3, 3, 200, 17), (1, 2, 3000, 9), (5, 1, 1, 40), (2, 2, 0, 5),
                         (1, 0, 4, 4)]:
        a = random_boxes((b1, n), g, dtype, integer) * 13.7
        q = random_boxes((b2, k), g, dtype, integer) * 13.7
        for ioa in (False, True):
            out = box_iou_batched(a.cuda(), q.cuda(), ioa)
            assert out.is_cuda and out.dtype == dtype
            cpu = box_iou_batched(a, q, ioa)
            assert torch.equal(out.cpu(), cpu)
            assert torch.equal(out, reference(a.cuda(), q.cuda(), ioa))   # torch on the GPU


@pytest.mark.cuda
@cuda
def test_cuda_non_contiguous_and_large_grid():
    g = torch.Generator().manual_seed(12)
    a = random_boxes((2, 5000), g, torch.float32).cuda()[:, ::2]     # strided rows
    q = random_boxes((2, 900), g, torch.float32).cuda()             # 2 x 2500 x 900 outputs
    assert torch.equal(box_iou_batched(a, q), reference(a, q))


@pytest.mark.cuda
@cuda
def test_cuda_runs_without_host_sync():
    g = torch.Generator().manual_seed(13)
    a = random_boxes((1, 500), g, torch.float32).cuda()
    q = random_boxes((2, 20), g, torch.float32).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = box_iou_batched(a, q)
        out2 = overlaps.box_iou(a, q)
        out3 = overlaps.box_ioa(a.view(500, 1, 4)[:2], q)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(out, reference(a, q)) and torch.equal(out2, out)
    assert torch.equal(out3, reference(a.view(500, 1, 4)[:2], q, True))
