"""Mask targets against Detectron's ``add_mask_rcnn_blobs`` path with pycocotools' rasterization
(``polys_to_mask_wrt_box``: ``frPyObjects`` + ``decode``) on real coco_mini polygons, and the
device rasterizer against pycocotools on random polygons."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from _targets_coco import (
    batch, detectron_candidate_boxes, jittered_proposals, load_roidb, pick_entries)
from _params import fast_rcnn_params
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
    lab = label_proposals(rois, gt, im_info, fast_rcnn_params(crowd_filter_thresh=0.))
    blobs = sample_rois(lab, 3, fast_rcnn_params(batch_size_per_im=128, num_classes=81),
                        generator=torch.Generator().manual_seed(0))
    # Detectron's sampled_boxes: the roidb rows at the original scale
    blobs['detectron_boxes'] = detectron_candidate_boxes(
        entries, scales, rois, gt.valid.shape[1])[blobs['sampled_inds'].numpy()]
    return entries, scales, broidb, im_info, gt, blobs


@pytest.mark.parametrize('M', [28, 14])
def test_mask_targets_match_pycocotools_on_coco(sampled, M):
    entries, scales, broidb, im_info, gt, blobs = sampled
    polys = pack_polygons(broidb, gt.valid.shape[1], 'cpu')
    assert polys.original_scale
    out = mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], polys, gt, im_info,
                            resolution=M, rois_orig=blobs['sampled_boxes'])
    fg = blobs['labels_int32'] > 0
    assert torch.equal(out['roi_has_mask_int32'].bool(), fg)      # every image has fg here
    assert torch.equal(out['mask_rois'], blobs['rois'][fg])
    assert torch.equal(out['mask_labels_int32'], blobs['labels_int32'][fg])
    masks = out['masks_int32'].numpy()
    assert masks.shape == (int(fg.sum()), M, M) and set(np.unique(masks)) <= {0, 1}
    # Detectron's rois blob: the original-scale boxes times im_scale (float32)
    fg_boxes = blobs['detectron_boxes'][fg.numpy()]
    s32 = np.array([np.float32(s) for s in scales], np.float32)
    batch_of = out['mask_rois'][:, 0].long().numpy()
    np.testing.assert_array_equal(out['mask_rois'][:, 1:].numpy(),
                                  fg_boxes * s32[batch_of][:, None])
    for r, roi_orig in enumerate(fg_boxes):
        entry = entries[batch_of[r]]
        gt_rows = np.where(entry['gt_classes'] > 0)[0]
        nc = [i for i in range(len(gt_rows)) if not entry['is_crowd'][gt_rows[i]]]
        # Detectron's own inputs, original scale: the json polygons and sampled_boxes
        polys_orig = [entry['segms'][gt_rows[i]] for i in nc]
        j = bbox_overlaps(roi_orig[None], _polys_to_boxes(polys_orig)).argmax(axis=1)[0]
        ref = _coco_mask_wrt_box(polys_orig[j], roi_orig, M)
        np.testing.assert_array_equal(masks[r].astype(bool), ref)


@pytest.mark.parametrize('path', ['op', 'torch', pytest.param('cuda', marks=pytest.mark.cuda)])
def test_thin_rois_clamped_at_the_original_scale(path, monkeypatch):
    """RoIs thinner than one original pixel: Detectron's polys_to_mask_wrt_box clamps the box
    width / height to 1 in original pixels. At blob scale 2 a RoI 0.6 px wide is 1.2 px wide,
    so a clamp in the blob frame would stretch the polygon 1 / 0.6 times more."""
    if path != 'torch' and not ops.extension_available():
        pytest.skip("pydetectron._C not built")
    dev = 'cuda' if path == 'cuda' else 'cpu'
    if path == 'torch':
        monkeypatch.setattr(ops, 'extension_available', lambda: False)
    s, M = 2.0, 14
    f = np.float32
    # a thin vertical sliver and a normal object; the gt boxes as the roidb has them
    polys = [[np.array([10.0, 10.0, 10.5, 10.0, 10.5, 30.0, 10.0, 30.0], np.float32)],
             [np.array([40.0, 5.0, 70.0, 8.0, 66.0, 40.0, 45.0, 33.0], np.float32)]]
    boxes = np.array([[10.0, 10.0, 10.5, 30.0], [40.0, 5.0, 70.0, 40.0]], np.float32)
    roidb = [{'boxes': torch.from_numpy(boxes * f(s)), 'boxes_orig': torch.from_numpy(boxes),
              'gt_classes': torch.tensor([1, 2]), 'is_crowd': torch.tensor([False, False]),
              'segms': [[p * f(s) for p in obj] for obj in polys], 'segms_orig': polys}]
    im_info = torch.tensor([[100., 160., s]])
    # proposals (blob scale): thin ones over the sliver (0.6 and 0.9 original px wide, fg), and
    # one 2 px wide
    rois = torch.tensor([[0., 20.2, 20., 21.4, 60.], [0., 19.6, 21., 21.4, 59.],
                         [0., 19.0, 20., 23.0, 60.]])
    gt = pack_gt(roidb, dev)
    packed = pack_polygons(roidb, gt.valid.shape[1], dev)
    lab = label_proposals(rois.to(dev), gt, im_info.to(dev),
                          fast_rcnn_params(crowd_filter_thresh=0.))
    blobs = sample_rois(lab, 1, fast_rcnn_params(batch_size_per_im=64, num_classes=3),
                        generator=torch.Generator(device=dev).manual_seed(0))
    out = mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], packed, gt, im_info.to(dev),
                            resolution=M, rois_orig=blobs['sampled_boxes'])
    blobs = {k: v.cpu() for k, v in blobs.items()}
    out = {k: v.cpu() for k, v in out.items()}
    fg = (blobs['labels_int32'] > 0).numpy()
    assert fg.sum() == 5                      # both gt rows and the three proposals
    inv = f(1. / np.float64(f(s)))
    cand = np.vstack([boxes, rois[:, 1:].numpy() * inv])   # Detectron's roidb rows
    fg_boxes = cand[blobs['sampled_inds'].numpy()][fg]
    differs = 0
    for r, roi_orig in enumerate(fg_boxes):
        obj = int(out['mask_labels_int32'][r]) - 1         # class k is object k - 1 here
        ref = _coco_mask_wrt_box(polys[obj], roi_orig, M)
        got = out['masks_int32'][r].numpy().astype(bool)
        np.testing.assert_array_equal(got, ref)
        blob_frame = _coco_mask_wrt_box([p * f(s) for p in polys[obj]], roi_orig * f(s), M)
        differs += int((blob_frame != ref).any())
    assert differs >= 3                       # the thin RoIs: the case the clamp decides


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


def test_fixed_slots_give_the_unpadded_targets_in_their_valid_rows(sampled):
    """``fixed_slots`` (B rows per image, fg first, padding labelled -1): the mask RoIs are the
    first F rows of each image, and the valid ones hold exactly the unpadded targets -- image
    2 without fg lends its first RoI as an ignored one there too."""
    entries, scales, broidb, im_info, gt, blobs = sampled
    polys = pack_polygons(broidb, gt.valid.shape[1], 'cpu')
    rois, labels = blobs['rois'], blobs['labels_int32'].clone()
    labels[rois[:, 0] == 2] = 0
    N, B, M = 3, 160, 14
    # each image's rows fg first (stable), then padding rows (any RoI, label -1) up to B
    rows, pad_rows = [], []
    for n in range(N):
        idx = torch.nonzero(rois[:, 0] == n).flatten()
        idx = idx[torch.sort((labels[idx] == 0).long(), stable=True).indices]
        assert idx.numel() < B
        rows.append(idx)
        pad_rows.append(torch.cat([idx, torch.zeros(B - idx.numel(), dtype=torch.long)]))
    order = torch.cat(rows)
    fg_count = torch.tensor([int((labels[r] > 0).sum()) for r in rows])
    assert fg_count[2] == 0 and (fg_count[:2] > 0).all()
    F = int(fg_count.max()) + 3
    slot = torch.cat(pad_rows)
    slot_labels = torch.cat([torch.cat([labels[r], torch.full((B - r.numel(),), -1,
                                                               dtype=torch.int32)])
                             for r in rows])
    compact = mask_rcnn_targets(rois[order], labels[order], polys, gt, im_info, resolution=M)
    fixed = mask_rcnn_targets(rois[slot], slot_labels, polys, gt, im_info, resolution=M,
                              fixed_slots=(B, F, fg_count))
    valid = fixed['mask_roi_valid']
    assert valid.shape == (N * F,) and int(valid.sum()) == compact['mask_rois'].shape[0]
    assert valid.view(N, F)[2].tolist() == [True] + [False] * (F - 1)     # the lent RoI
    assert torch.equal(fixed['mask_inds'][valid],
                       torch.cat([n * B + torch.arange(int(max(c, 1)))
                                  for n, c in enumerate(fg_count.tolist())]))
    for key in ('mask_rois', 'masks_int32', 'mask_labels_int32'):
        assert torch.equal(fixed[key][valid], compact[key]), key
    assert (fixed['masks_int32'][~valid] == -1).all()
    assert (fixed['mask_labels_int32'][~valid] == 0).all()
    has = fixed['roi_has_mask_int32'].view(N, B)
    assert torch.equal(has[:, :F].reshape(-1) > 0, valid) and (has[:, F:] == 0).all()
    with pytest.raises(ValueError, match='fixed_slots'):
        mask_rcnn_targets(rois[slot], slot_labels, polys, gt, im_info, resolution=M,
                          fixed_slots=(B + 1, F, fg_count))


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
