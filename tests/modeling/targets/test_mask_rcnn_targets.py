"""Mask targets against Detectron's ``add_mask_rcnn_blobs`` path with pycocotools' rasterization
(``polys_to_mask_wrt_box``: ``frPyObjects`` + ``decode``) on real coco_mini polygons, and the
device rasterizer against pycocotools on random polygons."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from _targets_coco import batch, jittered_proposals, load_roidb, pick_entries
from pydetectron import ops
from pydetectron.modeling.targets import (
    expand_to_class_specific_mask_targets, label_proposals, mask_rcnn_targets, pack_gt,
    pack_polygons, sample_rois)
from pydetectron.modeling.targets.rasterize import rasterize_polygons
from pydetectron.utils.boxes import bbox_overlaps

# pycocotools 2.0.x warns about numpy 2 copy semantics on every decode
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _coco_mask_wrt_box(polygons, box, M, dtype=np.float32):
    """Detectron's polys_to_mask_wrt_box (float32 normalisation, pycocotools raster)."""
    box = np.asarray(box, dtype=dtype)
    w = np.maximum(box[2] - box[0], dtype(1))
    h = np.maximum(box[3] - box[1], dtype(1))
    norm = []
    for poly in polygons:
        p = np.array(poly, dtype=dtype)
        p[0::2] = (p[0::2] - box[0]) * M / w
        p[1::2] = (p[1::2] - box[1]) * M / h
        norm.append(p.astype(np.float64).tolist())
    return mask_util.decode(mask_util.frPyObjects(norm, M, M)).sum(axis=2) > 0


def _polys_to_boxes(polys):
    return np.array([[min(min(p[0::2]) for p in s), min(min(p[1::2]) for p in s),
                      max(max(p[0::2]) for p in s), max(max(p[1::2]) for p in s)]
                     for s in polys], dtype=np.float32)


@pytest.fixture(scope='module')
def sampled(coco_mini):
    roidb = load_roidb(coco_mini)
    entries = pick_entries(roidb, 1, min_gt=3, need_crowd=True) \
        + pick_entries(roidb[20:], 2, min_gt=5)
    scales = [0.7, 0.55, 0.6]
    broidb, im_info = batch(entries, scales)
    rois = jittered_proposals(broidb, im_info, per_gt=10, seed=2)
    gt = pack_gt(broidb, 'cpu')
    lab = label_proposals(rois, gt, im_info, crowd_filter_thresh=0.)
    blobs = sample_rois(lab, 3, batch_size_per_im=128, num_classes=81,
                        generator=torch.Generator().manual_seed(0))
    return entries, scales, broidb, im_info, gt, blobs


@pytest.mark.parametrize('M', [28, 14])
def test_mask_targets_match_pycocotools_on_coco(sampled, M, capsys):
    entries, scales, broidb, im_info, gt, blobs = sampled
    polys = pack_polygons(broidb, gt.valid.shape[1], 'cpu')
    out = mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], polys, gt, im_info,
                            resolution=M)
    fg = blobs['labels_int32'] > 0
    assert torch.equal(out['roi_has_mask_int32'].bool(), fg)      # every image has fg here
    assert torch.equal(out['mask_rois'], blobs['rois'][fg])
    assert torch.equal(out['mask_labels_int32'], blobs['labels_int32'][fg])
    masks = out['masks_int32'].numpy()
    assert masks.shape == (int(fg.sum()), M, M) and set(np.unique(masks)) <= {0, 1}
    same_px = orig_px = total = 0
    for r, roi in enumerate(out['mask_rois'].numpy()):
        n = int(roi[0])
        entry, s, d = entries[n], scales[n], broidb[n]
        gt_rows = np.where(entry['gt_classes'] > 0)[0]
        nc = [i for i in range(len(gt_rows)) if not entry['is_crowd'][gt_rows[i]]]
        # Detectron's matching, original scale
        polys_orig = [entry['segms'][gt_rows[i]] for i in nc]
        roi_orig = roi[1:] * np.float32(1. / s)
        j = bbox_overlaps(roi_orig[None], _polys_to_boxes(polys_orig)).argmax(axis=1)[0]
        # the rasterization of the same (blob-scale) inputs: pixel-exact
        ref = _coco_mask_wrt_box(d['segms'][nc[j]], roi[1:], M)
        same_px += (ref == masks[r].astype(bool)).sum()
        # Detectron's own inputs (original-scale polygons and box): the scale round trip's
        # rounding could move a pixel, but none does on this data (measured 100%)
        ref_orig = _coco_mask_wrt_box(polys_orig[j], roi_orig, M)
        orig_px += (ref_orig == masks[r].astype(bool)).sum()
        total += M * M
    with capsys.disabled():
        print('\n[mask targets M=%d] %d RoIs: pycocotools agreement %.4f%% (same inputs), '
              '%.4f%% (Detectron original-scale inputs)'
              % (M, len(masks), 100. * same_px / total, 100. * orig_px / total))
    assert same_px == total
    assert orig_px == total


@pytest.mark.skipif(not ops.extension_available(), reason="pydetectron._C not built")
@pytest.mark.parametrize('M', [28, 56])
def test_mask_targets_with_the_op_equal_the_torch_path(sampled, M, monkeypatch):
    """The one-op rasterization (``ops.polygon_masks_in_boxes``) gives the same targets as the
    pure-torch fallback (extension_available patched to False)."""
    entries, scales, broidb, im_info, gt, blobs = sampled
    polys = pack_polygons(broidb, gt.valid.shape[1], 'cpu')
    N, G = gt.valid.shape
    assert polys.obj_first.shape == polys.obj_count.shape == (N * G,)
    # each object's polygons are the run obj_first .. + obj_count of the packed polygons
    assert torch.equal(torch.repeat_interleave(torch.arange(N * G), polys.obj_count),
                       polys.gt_index)
    calls = []
    real_op = ops.polygon_masks_in_boxes
    monkeypatch.setattr(ops, 'polygon_masks_in_boxes',
                        lambda *a: calls.append(1) or real_op(*a))
    # background RoIs relabelled fg (boxes away from their object: vertices far outside), and
    # image 2 without fg (it lends an ignored RoI: an unmatched, all -1 target)
    rois, labels = blobs['rois'], blobs['labels_int32'].clone()
    labels[torch.nonzero(labels == 0).flatten()[::4]] = 1
    labels[rois[:, 0] == 2] = 0
    with_op = mask_rcnn_targets(rois, labels, polys, gt, im_info, resolution=M)
    assert len(calls) == 1
    monkeypatch.setattr(ops, 'extension_available', lambda: False)
    without = mask_rcnn_targets(rois, labels, polys, gt, im_info, resolution=M)
    assert len(calls) == 1
    assert with_op.keys() == without.keys()
    for k in with_op:
        assert torch.equal(with_op[k], without[k]), k
    masks = with_op['masks_int32']
    assert (masks == 1).any() and (masks == 0).any() and (masks == -1).any()


def test_rasterizer_is_pixel_exact_on_random_polygons():
    rng = np.random.RandomState(0)
    polys, M = [], 28
    for t in range(400):
        n = rng.randint(3, 30)
        if t % 4 == 0:      # much larger than the grid, far outside too
            pts = rng.uniform(-8 * M, 8 * M, (n, 2))
        elif t % 4 == 1:    # tiny, near the grid
            pts = rng.uniform(0, 3, (n, 2)) + rng.uniform(-2, M, (1, 2))
        elif t % 4 == 2:    # convex-ish
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = rng.uniform(0, M, 2) + rng.uniform(1, M) * np.stack([np.cos(a), np.sin(a)], 1)
        else:               # on the 1/5 and 1/2 grids: exact rounding ties
            pts = rng.randint(-15, 5 * M + 15, (n, 2)) / rng.choice([2., 5., 10.])
        polys.append(pts.astype(np.float32))
    lengths = torch.tensor([len(p) for p in polys])
    out = rasterize_polygons(torch.from_numpy(np.concatenate(polys)),
                             torch.cumsum(lengths, 0) - lengths, lengths, M, M)
    for i, p in enumerate(polys):
        ref = mask_util.decode(mask_util.frPyObjects([p.astype(np.float64).ravel().tolist()],
                                                     M, M))[:, :, 0]
        np.testing.assert_array_equal(out[i].numpy(), ref.astype(bool), err_msg='polygon %d' % i)
    # a non-square grid
    sq = torch.tensor([[1., 1.], [9.5, 1.], [9.5, 4.2], [1., 4.2]])
    ref = mask_util.decode(mask_util.frPyObjects([sq.double().view(-1).tolist()], 6, 12))[:, :, 0]
    got = rasterize_polygons(sq, torch.tensor([0]), torch.tensor([4]), 6, 12)[0]
    np.testing.assert_array_equal(got.numpy(), ref.astype(bool))


def test_no_foreground_image_lends_an_ignored_roi_and_unmatched_rois_are_ignored():
    M = 4
    roidb = [
        # image 0: one object, a square polygon; its gt box is a fg RoI
        {'boxes': torch.tensor([[0., 0., 7., 7.]]), 'gt_classes': torch.tensor([3]),
         'is_crowd': torch.tensor([False]),
         'segms': [[np.array([0., 0., 8., 0., 8., 8., 0., 8.], np.float32)]]},
        # image 1: only a crowd region (RLE): a fg RoI over it has no polygon to learn from
        {'boxes': torch.tensor([[0., 0., 9., 9.]]), 'gt_classes': torch.tensor([1]),
         'is_crowd': torch.tensor([True]),
         'segms': [{'size': [10, 10], 'counts': b'0'}]},
        # image 2: no fg RoI at all
        {'boxes': torch.tensor([[0., 0., 3., 3.]]), 'gt_classes': torch.tensor([2]),
         'is_crowd': torch.tensor([False]),
         'segms': [[np.array([0., 0., 4., 0., 4., 4.], np.float32)]]},
    ]
    rois = torch.tensor([[0., 0., 0., 7., 7.], [0., 20., 20., 30., 30.],
                         [1., 0., 0., 9., 9.], [2., 10., 10., 20., 20.], [2., 12., 12., 20., 20.]])
    labels = torch.tensor([3, 0, 1, 0, 0], dtype=torch.int32)
    im_info = torch.tensor([[40., 40., 1.]] * 3)
    out = mask_rcnn_targets(rois, labels, roidb, roidb, im_info, resolution=M)
    assert torch.equal(out['roi_has_mask_int32'], torch.tensor([1, 0, 1, 1, 0], dtype=torch.int32))
    assert torch.equal(out['mask_rois'], rois[[0, 2, 3]])
    assert torch.equal(out['mask_labels_int32'], torch.tensor([3, 1, 0], dtype=torch.int32))
    # the square fills the RoI's [0, 7] frame scaled by 4/7: rows/cols 0..3 all inside
    assert torch.equal(out['masks_int32'][0], torch.ones((M, M), dtype=torch.int32))
    assert (out['masks_int32'][1:] == -1).all()
    # Detectron's class-specific layout: the class slot holds the target, -1 elsewhere
    cs = expand_to_class_specific_mask_targets(out['masks_int32'], out['mask_labels_int32'], 4)
    assert cs.shape == (3, 4 * M * M)
    cs = cs.view(3, 4, M, M)
    assert torch.equal(cs[0, 3], out['masks_int32'][0]) and (cs[0, :3] == -1).all()
    assert (cs[1:] == -1).all()


def test_polygon_count_mismatch_names_the_field():
    roidb = [{'boxes': torch.tensor([[0., 0., 7., 7.]]), 'gt_classes': torch.tensor([3]),
              'is_crowd': torch.tensor([False]), 'segms': []}]
    with pytest.raises(ValueError, match="segms"):
        pack_polygons(roidb, 1, 'cpu')
