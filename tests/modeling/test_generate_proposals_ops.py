"""generate_multilevel_proposals against its previous, straightforward implementation (map by
map top-k, bbox_transform, per-segment ranks), copied below as the reference: the outputs must
be bit-identical, and one call must issue few ATen operators (each costs host time on a GPU)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pydetectron.modeling import generate_proposals as gp
from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import (
    FieldAnchors, ProposalParams, generate_multilevel_proposals, group_by_image,
    rank_within_image, shifted_anchors)
from pydetectron.utils.boxes import BBOX_XFORM_CLIP, bbox_transform


# ---- the reference: the implementation before the operator-count work ------------------------

def _ref_level_top(cls_probs, bbox_pred, field_anchors, params):
    n, a, h, w = cls_probs.shape
    scores = cls_probs.float().permute(0, 2, 3, 1).reshape(n, -1)  # (N, K), ordered (H, W, A)
    deltas = bbox_pred.float().permute(0, 2, 3, 1).reshape(n, -1, 4)  # (N, K, 4)
    k = scores.shape[1]
    pre = params.pre_nms_top_n
    if 0 < pre < k:
        scores, order = torch.topk(scores, pre, dim=1, sorted=True)
    else:
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    deltas = torch.gather(deltas, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    return scores.reshape(-1), deltas.reshape(-1, 4), field_anchors[order.reshape(-1)]


def _ref_decode_clip_validate(anchors, deltas, im_info, im_inds, min_size, bbox_xform_clip):
    boxes = bbox_transform(anchors, deltas, clip=bbox_xform_clip)
    info = im_info[im_inds]                                    # (F, 3) height, width, scale
    hw_max = (info[:, :2] - 1).flip(1).repeat(1, 2)            # (F, 4) w-1, h-1, w-1, h-1
    boxes = torch.minimum(boxes, hw_max).clamp_(min=0)
    wh = boxes[:, 2:] - boxes[:, :2] + 1                       # (F, 2)
    ctr = boxes[:, :2] + wh / 2.
    wh_orig = (boxes[:, 2:] - boxes[:, :2]) / info[:, 2:3] + 1
    valid = ((wh_orig >= max(min_size, 1)).all(dim=1)
             & (ctr < info[:, :2].flip(1)).all(dim=1))
    return boxes, valid


def _ref_rank_in_segments(flags, seg_start):
    cs = torch.cumsum(flags.to(torch.int32), 0)
    before = torch.where(seg_start > 0, cs[(seg_start - 1).clamp(min=0)], torch.zeros_like(cs))
    return cs - before - 1


def reference_multilevel_proposals(cls_probs, bbox_pred, im_info, anchors, feat_strides, params,
                                   collect_top_n=None, per_image=True,
                                   bbox_xform_clip=BBOX_XFORM_CLIP, field_anchors=None):
    num_maps = len(cls_probs)
    n = cls_probs[0].shape[0]
    device = cls_probs[0].device
    im_info = im_info.to(device=device, dtype=torch.float32)
    if field_anchors is None:
        field_anchors = [shifted_anchors(anc.to(device, torch.float32), p.shape[2], p.shape[3], st)
                         for anc, p, st in zip(anchors, cls_probs, feat_strides)]
    scores, deltas, cand_anchors, seg_ids, seg_starts = [], [], [], [], []
    level_offsets, level_sizes = [], []
    offset = 0
    for l, (probs, pred, fa) in enumerate(zip(cls_probs, bbox_pred, field_anchors)):
        s, d, a = _ref_level_top(probs, pred, fa.to(device, torch.float32), params)
        p = s.shape[0] // n
        level_offsets.append(offset)
        level_sizes.append(p)
        seg = torch.arange(n, device=device).view(-1, 1).expand(n, p).reshape(-1)
        seg_ids.append(seg + l * n)
        seg_starts.append(seg * p + offset)
        scores.append(s)
        deltas.append(d)
        cand_anchors.append(a)
        offset += n * p
    scores, seg_ids, seg_starts = torch.cat(scores), torch.cat(seg_ids), torch.cat(seg_starts)
    im_inds = seg_ids % n
    boxes, valid = _ref_decode_clip_validate(torch.cat(cand_anchors), torch.cat(deltas), im_info,
                                             im_inds, params.min_size, bbox_xform_clip)
    keep = valid
    if params.nms_thresh > 0:
        groups = torch.where(valid, seg_ids, seg_ids + num_maps * n)
        keep = gp._nms_by_image_chunks(boxes, scores, groups, params.nms_thresh, n,
                                       [(o, p) for o, p in zip(level_offsets, level_sizes)]) & valid
        if params.post_nms_top_n > 0:
            keep = keep & (_ref_rank_in_segments(keep, seg_starts) < params.post_nms_top_n)
    if collect_top_n is None:
        idx = torch.nonzero(keep).squeeze(1)
    else:
        ranked = torch.where(keep, scores, scores.new_full((), -1.))
        if per_image:
            order = group_by_image(ranked, im_inds)
        else:
            order = torch.argsort(ranked, descending=True, stable=True)
        chosen = keep[order]
        if collect_top_n > 0:
            rank = (rank_within_image(im_inds[order], n) if per_image
                    else torch.arange(order.numel(), device=device))
            chosen &= rank < collect_top_n
        idx = order[chosen]
        if not per_image:
            idx = idx[torch.argsort(im_inds[idx], stable=True)]
    boxes, scores, im_inds = boxes[idx], scores[idx], im_inds[idx]
    rois = torch.cat([im_inds.to(boxes.dtype).unsqueeze(1), boxes], dim=1)
    return rois, scores


# ---- inputs ------------------------------------------------------------------------------------

def pyramid(n, sizes, seed, cell_anchors=(3,) * 5, ties=True, spread=0.6):
    """Random RPN outputs of maps of ``sizes`` (H, W) with ``cell_anchors`` anchors per cell."""
    g = torch.Generator().manual_seed(seed)
    probs, deltas, anchors, strides = [], [], [], []
    ratios = {1: (1,), 2: (0.5, 2), 3: (0.5, 1, 2)}
    for k, ((h, w), a) in enumerate(zip(sizes, cell_anchors)):
        p = torch.rand(n, a, h, w, generator=g)
        if ties:  # many equal scores, within and across maps and images
            p[:, :, ::2] = torch.round(p[:, :, ::2] * 20) / 20
        probs.append(p)
        deltas.append(torch.randn(n, 4 * a, h, w, generator=g) * spread)
        anchors.append(torch.as_tensor(generate_anchors(2. ** (k + 2), (16. * 2 ** k,),
                                                        ratios[a])).float())
        strides.append(2. ** (k + 2))
    return probs, deltas, anchors, strides


IM_INFO = torch.tensor([[48., 64., 1.], [40., 60., 0.5], [30., 50., 2.], [47., 33., 1.25]])
# the third map (12 candidates per image) is smaller than every pre_nms_top_n below but -1
SIZES = [(12, 16), (6, 8), (2, 2), (3, 4)]


def assert_same(out, ref):
    assert out[0].dtype == ref[0].dtype and out[1].dtype == ref[1].dtype
    assert torch.equal(out[0], ref[0]), (out[0].shape, ref[0].shape)
    assert torch.equal(out[1], ref[1])


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("params", [
    ProposalParams(40, 25, 0.6, 0),    # post-NMS cut in the maps above 25 candidates
    ProposalParams(40, 40, 0.7, 4),    # no post-NMS cut needed; min_size
    ProposalParams(-1, 30, 0.5, 0),    # every candidate
    ProposalParams(30, 20, 0.0, 0),    # no NMS
    ProposalParams(100, -1, 0.7, 0)])  # pre_nms_top_n above some maps' sizes, no post cut
@pytest.mark.parametrize("collect", [(None, True), (30, True), (45, False), (0, True), (-1, False),
                                     (10 ** 6, False), (10 ** 6, True)])
def test_equals_reference(n, params, collect):
    probs, deltas, anchors, strides = pyramid(n, SIZES, seed=n)
    top_n, per_image = collect
    args = (probs, deltas, IM_INFO[:n], anchors, strides, params)
    out = generate_multilevel_proposals(*args, collect_top_n=top_n, per_image=per_image)
    ref = reference_multilevel_proposals(*args, collect_top_n=top_n, per_image=per_image)
    assert ref[0].shape[0] > 0
    assert_same(out, ref)


@pytest.mark.parametrize("per_image", [True, False])
def test_equals_reference_single_map_and_mixed_anchor_counts(per_image):
    # one map (C4's single-scale RPN) with a cut after NMS, and maps of different A
    params = ProposalParams(120, 50, 0.7, 0)
    for sizes, cells in (([(9, 11)], (3,)), ([(8, 10), (4, 5), (2, 3)], (3, 1, 2))):
        probs, deltas, anchors, strides = pyramid(3, sizes, seed=5, cell_anchors=cells)
        args = (probs, deltas, IM_INFO[:3], anchors, strides, params)
        for top_n in (None, 70):
            assert_same(generate_multilevel_proposals(*args, collect_top_n=top_n,
                                                      per_image=per_image),
                        reference_multilevel_proposals(*args, collect_top_n=top_n,
                                                       per_image=per_image))


def test_equals_reference_with_cached_field_anchors_bf16_and_strided_probs():
    params = ProposalParams(50, 30, 0.7, 0)
    probs, deltas, anchors, strides = pyramid(2, SIZES, seed=11, spread=2.0)  # clipped dw, dh
    # a softmax head's probabilities: a strided slice of (N, 2, A, H, W)
    probs = [torch.stack([1 - p, p], 1)[:, 1] for p in probs]
    field = [shifted_anchors(a, p.shape[2], p.shape[3], s)
             for a, p, s in zip(anchors, probs, strides)]
    args = (probs, deltas, IM_INFO[:2], anchors, strides, params)
    ref = reference_multilevel_proposals(*args, collect_top_n=40, per_image=False)
    for _ in range(2):  # the second call reads the caches
        assert_same(generate_multilevel_proposals(*args, collect_top_n=40, per_image=False,
                                                  field_anchors=field), ref)
    # field anchors changed in place: the cached anchor statistics must not be used
    field[1].add_(3.)
    moved = reference_multilevel_proposals(*args, collect_top_n=40, per_image=False,
                                           field_anchors=field)
    assert not torch.equal(moved[0], ref[0])
    assert_same(generate_multilevel_proposals(*args, collect_top_n=40, per_image=False,
                                              field_anchors=field), moved)
    # bf16 heads (--amp): the geometry is float32
    half = ([p.bfloat16() for p in probs], [d.bfloat16() for d in deltas])
    args = half + (IM_INFO[:2], anchors, strides, params)
    out = generate_multilevel_proposals(*args, collect_top_n=40, per_image=True)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert_same(out, reference_multilevel_proposals(*args, collect_top_n=40, per_image=True))


def test_outputs_carry_no_gradient():
    probs, deltas, anchors, strides = pyramid(2, SIZES[:2], seed=2)
    probs = [p.requires_grad_() for p in probs]
    rois, scores = generate_multilevel_proposals(probs, deltas, IM_INFO[:2], anchors, strides,
                                                 ProposalParams(40, 25, 0.6, 0), 30, False)
    assert not rois.requires_grad and not scores.requires_grad and rois.shape[0] > 0


def test_mismatched_field_anchors_rejected():
    probs, deltas, anchors, strides = pyramid(1, SIZES[:2], seed=1)
    field = [shifted_anchors(a, 2, 2, s) for a, s in zip(anchors, strides)]
    with pytest.raises(ValueError, match="anchors for a 12x16 map of 3 anchors per cell"):
        generate_multilevel_proposals(probs, deltas, IM_INFO[:1], anchors, strides,
                                      ProposalParams(10, 5, 0.7, 0), field_anchors=field)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("n,params,top_n,per_image,bound", [
    (2, ProposalParams(2000, 2000, 0.7, 0), 2000, False, 75),  # FPN training (71; was 233)
    (1, ProposalParams(1000, 1000, 0.7, 0), 1000, True, 72),   # FPN inference (68; was 236)
    (2, ProposalParams(1000, 300, 0.7, 0), 1000, True, 82)])   # per image, post-NMS cut (78)
def test_operator_count(n, params, top_n, per_image, bound):
    # Mask R-CNN's five FPN maps of a 256 x 416 blob; each operator costs the host ~30 us on a
    # GPU, whatever its size, so the count must not creep back up with the number of maps.
    sizes = [(64, 104), (32, 52), (16, 26), (8, 13), (4, 7)]
    probs, deltas, anchors, strides = pyramid(n, sizes, seed=1)
    field = FieldAnchors([shifted_anchors(a, h, w, s)
                          for a, (h, w), s in zip(anchors, sizes, strides)])
    info = torch.tensor([[256., 416., 1.]] * n)
    args = (probs, deltas, info, anchors, strides, params, top_n, per_image)
    first = generate_multilevel_proposals(*args, field_anchors=field)  # fills the caches
    counter = _CountOps()
    with counter:
        out = generate_multilevel_proposals(*args, field_anchors=field)
    assert_same(out, first)
    assert counter.count <= bound, counter.count


def _ref_bbox_transform(boxes, deltas, weights, clip):
    """utils.boxes.bbox_transform's tensor arithmetic before the operator-count work."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=clip)
    dh = (deltas[:, 3::4] / wh).clamp(max=clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    pred = deltas.new_zeros(deltas.shape)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return pred


@pytest.mark.parametrize("weights", [(1., 1., 1., 1.), (10., 10., 5., 5.), (10., 20., 5., 5.),
                                     (3., 3., 7., 7.)])
@pytest.mark.parametrize("rows,classes", [(1, 1), (37, 3), (1000, 81), (213, 2)])
def test_bbox_transform_tensor_path_bit_identical(weights, rows, classes):
    # the box post-processing decodes (R, 4K) deltas with Detectron's (10, 10, 5, 5) weights
    from pydetectron.utils.boxes import bbox_transform as decode
    g = torch.Generator().manual_seed(rows * classes)
    xy = torch.rand(rows, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + torch.rand(rows, 2, generator=g) * 300], 1)
    deltas = torch.randn(rows, 4 * classes, generator=g) * 3  # some dw / dh beyond the clip
    deltas[0, :2] = torch.tensor([float("inf"), float("nan")])
    for d in (deltas, deltas.t().contiguous().t()):  # contiguous and strided deltas
        out = decode(boxes, d, weights, BBOX_XFORM_CLIP)
        ref = _ref_bbox_transform(boxes, d, weights, BBOX_XFORM_CLIP)
        assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
        assert torch.equal(out.isnan(), ref.isnan()) and out[0, 0].isinf()
        assert torch.equal(out.nan_to_num(7.), ref.nan_to_num(7.))
    # float64 boxes take the deltas' dtype
    out = decode(boxes.double(), deltas, weights, BBOX_XFORM_CLIP)
    assert out.dtype == torch.float32
    assert torch.equal(out.nan_to_num(7.), ref.nan_to_num(7.))


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])  # nonzero.default -> nonzero
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("top_n,per_image", [(None, True), (30, True), (30, False)])
def test_cold_caches_copy_nothing_from_the_host(monkeypatch, top_n, per_image):
    # On CUDA a tensor made on the host and copied over (torch.tensor(..., device=...)) or a value
    # read back (.item(), nonzero) synchronises; filling the caches must not, so that the final
    # count stays the only synchronisation even on a first call (the CUDA test checks the rest).
    gp._candidate_layout.cache_clear()
    probs, deltas, anchors, strides = pyramid(3, SIZES, seed=8)
    field = gp.FieldAnchors([shifted_anchors(a, p.shape[2], p.shape[3], s)
                             for a, p, s in zip(anchors, probs, strides)])
    mode = _OpNames()
    with mode:
        out = generate_multilevel_proposals(probs, deltas, IM_INFO[:3], anchors, strides,
                                            ProposalParams(40, 25, 0.6, 0), top_n, per_image,
                                            field_anchors=field)
    assert gp._candidate_layout.cache_info().currsize == 1
    assert field._centres_sizes is not None
    banned = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "item", "tolist"}
    assert not banned & set(mode.names), sorted(banned & set(mode.names))
    assert mode.names.count("nonzero") == (top_n is None)
    assert_same(out, reference_multilevel_proposals(probs, deltas, IM_INFO[:3], anchors, strides,
                                                    ProposalParams(40, 25, 0.6, 0), top_n,
                                                    per_image))


def test_rpn_keeps_one_field_anchor_set_per_map_sizes():
    # The RPN modules own the cached anchors (and so their centres and sizes): one FieldAnchors
    # per set of map sizes, equal to the anchors built from scratch, and proposals equal to
    # those computed without any kept anchors.
    from pydetectron.modeling.rpn_heads import fpn_rpn_outputs
    torch.manual_seed(0)
    rpn = fpn_rpn_outputs(8, [1 / 4., 1 / 8.], k_min=2, k_max=3).eval()
    maps = [torch.randn(1, 8, 12, 16), torch.randn(1, 8, 6, 8)]
    first = rpn.field_anchor_set(maps)
    assert rpn.field_anchor_set([m.clone() for m in maps]) is first
    assert rpn.field_anchor_set([maps[0][..., :4, :], maps[1]]) is not first
    cells = [rpn.anchors_fpn2, rpn.anchors_fpn3]
    for got, cell, m, s in zip(first.per_map, cells, maps, (4., 8.)):
        assert torch.equal(got, shifted_anchors(cell, m.shape[2], m.shape[3], s))
    info = torch.tensor([[48., 64., 1.]])
    out = rpn(maps, info)
    ref = generate_multilevel_proposals(out["rpn_cls_probs"], out["rpn_bbox_pred"], info, cells,
                                        [4., 8.], rpn.test_params, collect_top_n=1000)
    assert first._centres_sizes is not None
    assert_same((out["rpn_rois"], out["rpn_roi_probs"]), ref)
