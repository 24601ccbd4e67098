"""polygon_masks_in_boxes (Mask R-CNN's polygon rasterization inside boxes in one op) against the
pure-torch path it replaces (``targets.mask_rcnn._rasterize_for_rois_torch``): the same bits on
random and real coco_mini polygons, pycocotools on hand-made cases, CPU/CUDA parity and no host
synchronisation on CUDA."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from ops_test_utils import cuda_kernels_available, needs_ext
from pydetectron.modeling.targets.mask_rcnn import PolygonBatch, _rasterize_for_rois_torch
from pydetectron.ops import polygon_masks_in_boxes

pytestmark = [needs_ext, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

cuda = pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")


class Case:
    """Objects' polygons packed as the op takes them (and as a PolygonBatch), boxes and groups."""

    def __init__(self, objects, boxes, group):
        # objects: list (Q) of lists of (n, 2) float32 vertex arrays
        polys = [p for obj in objects for p in obj]
        lengths = torch.tensor([len(p) for p in polys], dtype=torch.int64)
        self.xy = torch.from_numpy(np.concatenate(polys).astype(np.float32)) if polys \
            else torch.zeros((0, 2))
        self.starts = torch.cumsum(lengths, 0) - lengths
        self.lengths = lengths
        count = torch.tensor([len(obj) for obj in objects], dtype=torch.int64)
        self.first = torch.cumsum(count, 0) - count
        self.count = count
        self.gt_index = torch.repeat_interleave(torch.arange(len(objects)), count)
        self.boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).view(-1, 4)
        self.group = torch.as_tensor(np.asarray(group, dtype=np.int64)).view(-1)
        self.num_objects = len(objects)

    def args(self, device='cpu'):
        return [t.to(device) for t in (self.xy, self.starts, self.lengths, self.first, self.count,
                                       self.boxes, self.group)]

    def op(self, M, device='cpu'):
        return polygon_masks_in_boxes(*self.args(device), M)

    def reference(self, M):
        """The pure-torch path of the mask targets (itself pinned to pycocotools)."""
        polys = PolygonBatch(self.xy, self.starts, self.lengths, self.gt_index, self.first,
                             self.count)
        matched = self.group >= 0
        return _rasterize_for_rois_torch(self.boxes, self.group.clamp(min=0), matched, polys,
                                         self.num_objects, M)


def _random_polygon(rng, centre, size):
    kind = rng.randint(7)
    n = {0: 1, 1: 2}.get(kind, rng.randint(3, 31))
    if kind == 2:     # star-shaped (concave), angles in order
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = size * rng.uniform(0.2, 1., n)
        pts = centre + np.stack([rad * np.cos(a), rad * np.sin(a)], 1)
    elif kind == 3:   # random vertex order: self-intersecting
        pts = centre + rng.uniform(-size, size, (n, 2))
    elif kind == 4:   # on the 1/10 grid: exact rounding ties once mapped into an exact frame
        pts = np.round(centre) + np.round(rng.uniform(-size, size, (n, 2)) * 10) / 10
    elif kind == 5:   # degenerate edges: repeated vertices
        pts = centre + rng.uniform(-size, size, (n, 2))
        pts = np.repeat(pts, rng.randint(1, 4, n), axis=0)
    else:             # axis-aligned steps (horizontal and vertical edges)
        pts = np.round(centre + np.cumsum(rng.uniform(-size, size, (n, 2)), 0)
                       * (np.arange(n)[:, None] % 2 == [0, 1]))
    return pts.astype(np.float32)


def random_case(seed, M, num_objects=14, num_boxes=80):
    rng = np.random.RandomState(seed)
    objects, centres = [], []
    for q in range(num_objects):
        centre = rng.uniform(-30, 130, 2)
        size = rng.choice([0.4, 3., 25., 90.])
        k = 0 if q % 7 == 6 else rng.randint(1, 4)   # some objects have no polygon
        objects.append([_random_polygon(rng, centre, size) for _ in range(k)])
        centres.append((centre, size))
    # -1 and num_objects (out of range) are "no object": all-zero masks
    group = rng.randint(-1, num_objects + 1, num_boxes)
    boxes = []
    for r in range(num_boxes):
        c, s = centres[group[r] if 0 <= group[r] < num_objects else rng.randint(num_objects)]
        kind = r % 5
        if kind == 0:     # larger than the object
            w, h = s * rng.uniform(1.5, 4, 2) + 5
            x1, y1 = c - [w, h] * rng.uniform(0.2, 0.8, 2)
        elif kind == 1:   # small, on or near the object: its vertices map far outside the box
            w, h = rng.uniform(1, 6, 2)   # (|x'| up to ~1e4 at M = 56)
            x1, y1 = c + rng.uniform(-s, s, 2)
        elif kind == 2:   # degenerate: width / height below 1 (clamped to 1), even negative
            w, h = rng.uniform(-2, 1, 2)
            x1, y1 = c + rng.uniform(-s, s, 2)
        elif kind == 3:   # around the object, jittered
            x1, y1 = c - s * rng.uniform(0.5, 1.3, 2)
            w, h = 2 * s * rng.uniform(0.5, 1.3, 2)
        else:             # integer corner and size M: an exact frame (ties stay ties)
            x1, y1 = np.round(c - M / 2. + rng.uniform(-3, 3, 2))
            w = h = float(M)
        boxes.append([x1, y1, x1 + w, y1 + h])
    return Case(objects, boxes, group)


def coco_case(coco_mini, max_images=40, scale=0.6, jitter_per_object=3, seed=0):
    """Real coco_mini polygons (non-crowd), at a blob scale, with jittered and random boxes."""
    with open(os.path.join(coco_mini, 'annotations', 'instances_train2017.json')) as f:
        data = json.load(f)
    image_ids = sorted({im['id'] for im in data['images']})[:max_images]
    keep = set(image_ids)
    s = np.float32(scale)
    rng = np.random.RandomState(seed)
    objects, boxes, group = [], [], []
    for ann in data['annotations']:
        if ann['image_id'] not in keep or ann.get('iscrowd') or \
                not isinstance(ann['segmentation'], list) or not ann['segmentation']:
            continue
        q = len(objects)
        objects.append([np.asarray(p, dtype=np.float32).reshape(-1, 2) * s
                        for p in ann['segmentation']])
        x, y, w, h = (np.asarray(ann['bbox'], dtype=np.float32) * s).tolist()
        for _ in range(jitter_per_object):
            d = rng.uniform(-0.3, 0.3, 4) * [w, h, w, h]
            boxes.append([x + d[0], y + d[1], x + w + d[2], y + h + d[3]])
            group.append(q)
    # random boxes anywhere (mostly far from their object), and unmatched ones
    n_rand = len(boxes) // 3
    xy = rng.uniform(0, 400, (n_rand, 2))
    wh = rng.uniform(4, 200, (n_rand, 2))
    boxes += np.hstack([xy, xy + wh]).tolist()
    group += rng.randint(-1, len(objects), n_rand).tolist()
    return Case(objects, boxes, group)


@pytest.mark.parametrize('M', [14, 28, 56])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_polygons_equal_the_torch_path(seed, M):
    case = random_case(seed, M)
    out = case.op(M)
    ref = case.reference(M)
    assert out.shape == (case.boxes.shape[0], M, M) and out.dtype == torch.bool
    assert torch.equal(out, ref)
    # the cases are not trivial: many masks are partly set, the unmatched ones are empty
    assert (out.flatten(1).any(1)).sum() > 10
    none = (case.group < 0) | (case.group >= case.num_objects)
    assert none.any() and not out[none].any()


@pytest.mark.parametrize('M', [14, 28, 56])
def test_coco_polygons_equal_the_torch_path(coco_mini, M):
    case = coco_case(coco_mini)
    assert case.boxes.shape[0] > 200
    out = case.op(M)
    assert torch.equal(out, case.reference(M))
    assert out.flatten(1).any(1).float().mean() > 0.5


def _coco_decode(polys, M):
    rle = mask_util.frPyObjects([np.asarray(p, np.float64).ravel().tolist() for p in polys], M, M)
    return torch.from_numpy(mask_util.decode(rle).sum(axis=2) > 0)


def test_hand_made_cases_equal_pycocotools():
    M = 8
    square = np.array([[1., 1.], [6.5, 1.], [6.5, 5.2], [1., 5.2]], np.float32)
    triangle = np.array([[0., 7.5], [7.9, 7.9], [4., 0.2]], np.float32)
    hourglass = np.array([[0., 0.], [8., 8.], [8., 0.], [0., 8.]], np.float32)  # self-crossing
    case = Case([[square], [triangle], [hourglass], [square, triangle]],
                [[0., 0., 8., 8.]] * 4 + [[0., 0., 16., 4.], [-8., 0., 8., 8.]],
                [0, 1, 2, 3, 0, 1])
    out = case.op(M)
    frame_x2 = np.array([[1 / 2., 2.]], np.float32)            # box (0, 0, 16, 4) at M = 8
    expected = [_coco_decode([square], M), _coco_decode([triangle], M),
                _coco_decode([hourglass], M), _coco_decode([square, triangle], M),
                _coco_decode([square * frame_x2], M),
                _coco_decode([(triangle + [8., 0.]) * np.float32([0.5, 1.])], M)]
    for r, exp in enumerate(expected):
        assert torch.equal(out[r], exp), r
    # by hand: the pixel centres k + .5 in [1, 6.5] x [1, 5.2]: rows 1-4 and columns 1-6 (6.5,
    # on the right edge, is in: the edge snaps to 5 * 6.5 + .5 -> 33 = 5 * 6 + 3, the crossing)
    want = torch.zeros(M, M, dtype=torch.bool)
    want[1:5, 1:7] = True
    assert torch.equal(out[0], want)


def test_empty_inputs_give_zero_masks():
    case = random_case(3, 14, num_boxes=10)
    no_boxes = polygon_masks_in_boxes(*case.args()[:5], torch.zeros(0, 4), torch.zeros(0).long(),
                                      14)
    assert no_boxes.shape == (0, 14, 14) and no_boxes.dtype == torch.bool
    empty = Case([[], []], case.boxes, torch.arange(10) % 2)
    out = empty.op(7)
    assert out.shape == (10, 7, 7) and not out.any()
    # no vertices at all (P = V = 0, Q = 0): every group is out of range
    out = polygon_masks_in_boxes(torch.zeros(0, 2), torch.zeros(0).long(), torch.zeros(0).long(),
                                 torch.zeros(0).long(), torch.zeros(0).long(), case.boxes,
                                 torch.zeros(10).long(), 5)
    assert out.shape == (10, 5, 5) and not out.any()


def test_bad_inputs_raise_clear_errors():
    args = random_case(4, 14, num_boxes=6).args()
    xy, starts, lengths, first, count, boxes, group = args

    def call(**kw):
        names = ['xy', 'poly_starts', 'poly_lengths', 'group_first', 'group_count', 'boxes',
                 'group']
        a = dict(zip(names, args))
        a.update(kw)
        M = a.pop('resolution', 14)
        return polygon_masks_in_boxes(*[a[n] for n in names], M)

    with pytest.raises(TypeError, match='`xy` must be float32'):
        call(xy=xy.double())
    with pytest.raises(TypeError, match='`boxes` must be float32'):
        call(boxes=boxes.half())
    with pytest.raises(TypeError, match='`group` must be int64'):
        call(group=group.int())
    with pytest.raises(ValueError, match=r'`xy` must have shape \(V, 2\)'):
        call(xy=xy.view(-1))
    with pytest.raises(ValueError, match=r'`boxes` must have shape \(R, 4\)'):
        call(boxes=boxes[:, :3])
    with pytest.raises(ValueError, match=r'`poly_lengths` must have shape \(P,\) with P ='):
        call(poly_lengths=lengths[1:])
    with pytest.raises(ValueError, match=r'`group_count` must have shape \(Q,\)'):
        call(group_count=count[:-1])
    with pytest.raises(ValueError, match=r'`group` must have shape \(R,\) with R = 6'):
        call(group=group[:3])
    with pytest.raises(ValueError, match='`resolution` must be an int >= 1, got 0'):
        call(resolution=0)
    with pytest.raises(TypeError, match='`resolution` must be an int'):
        call(resolution=14.0)
    # the C++ op checks on its own too (and the CPU kernel checks the index ranges)
    op = torch.ops.pydetectron.polygon_masks_in_boxes
    with pytest.raises(RuntimeError, match='`resolution` must be >= 1, got 0'):
        op(xy, starts, lengths, first, count, boxes, group, 0)
    with pytest.raises(RuntimeError, match='`xy` must be float32'):
        op(xy.double(), starts, lengths, first, count, boxes, group, 14)
    bad = lengths.clone()
    bad[-1] += 1
    with pytest.raises(RuntimeError, match='does not fit in the .* vertices of `xy`'):
        op(xy, starts, bad, first, count, boxes, group, 14)
    bad = count.clone()
    bad[-1] += 1
    with pytest.raises(RuntimeError, match='does not fit in the .* polygons'):
        op(xy, starts, lengths, first, bad, boxes, group, 14)


def test_fake_kernel_gives_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = random_case(5, 14, num_boxes=9).args()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in args]
        out = torch.ops.pydetectron.polygon_masks_in_boxes(*fake, 28)
    assert out.shape == (9, 28, 28) and out.dtype == torch.bool


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('M', [14, 28, 56])
def test_cuda_equals_cpu(coco_mini, M):
    for case in [random_case(s, M) for s in range(3)] + [coco_case(coco_mini)]:
        out = case.op(M, 'cuda')
        assert out.is_cuda and out.dtype == torch.bool
        assert torch.equal(out.cpu(), case.op(M))


@pytest.mark.cuda
@cuda
def test_cuda_runs_without_host_sync():
    case = random_case(6, 28)
    args = case.args('cuda')
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = polygon_masks_in_boxes(*args, 28)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(out.cpu(), case.reference(28))


@pytest.mark.cuda
@cuda
def test_cuda_mask_targets_rasterization_runs_without_host_sync():
    from pydetectron.modeling.targets.mask_rcnn import _rasterize_for_rois
    case = random_case(7, 28)
    polys = PolygonBatch(*(t.cuda() for t in (case.xy, case.starts, case.lengths, case.gt_index,
                                              case.first, case.count)))
    boxes, group = case.boxes.cuda(), case.group.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = _rasterize_for_rois(boxes, group.clamp(min=0), group >= 0, polys, case.num_objects,
                                  28)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(out.cpu(), case.reference(28))


@pytest.mark.cuda
@cuda
def test_cuda_skips_a_polygon_outside_the_vertices():
    # the CPU raises for it; CUDA cannot without a sync: that polygon is left out, nothing else
    case = random_case(8, 14)
    xy, starts, lengths, first, count, boxes, group = case.args()
    bad = lengths.clone()
    bad[-1] = xy.shape[0] + 5
    out = polygon_masks_in_boxes(*[t.cuda() for t in (xy, starts, bad, first, count, boxes,
                                                      group)], 14)
    gone = lengths.clone()
    gone[-1] = 0
    assert torch.equal(out.cpu(), polygon_masks_in_boxes(xy, starts, gone, first, count, boxes,
                                                         group, 14))
