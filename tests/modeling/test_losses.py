"""Detectron's losses against hand-computed values, normalisations and gradients."""
import math

import pytest
import torch

from _rpn_loss_reference import flat_targets_from_blobs, rpn_losses_reference
from pydetectron.modeling import losses
from pydetectron.modeling.targets import expand_to_class_specific_mask_targets


def _bce(x, y):
    return math.log1p(math.exp(-x)) if y == 1 else math.log1p(math.exp(x))


def test_smooth_l1_hand_values_and_weights():
    pred = torch.tensor([[0.5, 2.0], [0.0, -0.05]])
    zeros, ones = torch.zeros(2, 2), torch.ones(2, 2)
    # beta 1: 0.5 * 0.25 + (2 - 0.5) + 0 + 0.5 * 0.0025 = 1.62625, over N = 2 rows
    assert losses.smooth_l1_loss(pred, zeros, ones, ones, beta=1.0).item() == pytest.approx(0.813125)
    # beta 1/9 (Detectron's sigma 3 for the RPN): |x| - 1/18, |x| - 1/18, 0, 0.5 * 0.0025 * 9
    exp = (0.5 - 1 / 18 + 2 - 1 / 18 + 0.5 * 0.0025 * 9) / 2
    assert losses.smooth_l1_loss(pred, zeros, ones, ones, beta=1 / 9).item() == pytest.approx(exp)
    inside = torch.tensor([[1., 0.], [1., 1.]])
    outside = torch.tensor([[4., 4.], [1., 1.]])
    assert losses.smooth_l1_loss(pred, zeros, inside, outside).item() == pytest.approx(
        (4 * 0.125 + 0.00125) / 2)
    # the inside weight multiplies the difference before the smooth-L1 (|2 * 2| = 4 -> 3.5)
    assert losses.smooth_l1_loss(pred[:1, 1:], zeros[:1, 1:], torch.full((1, 1), 2.),
                                 ones[:1, 1:]).item() == pytest.approx(3.5)


def _rpn(logits, preds, blobs, activation, rpn_min_level=2, batch_size_per_im=256):
    """(the package's loss, the level-by-level reference) of the same per-level blobs."""
    blobs = blobs if isinstance(blobs, list) else [blobs]
    out = losses.rpn_losses_flat(logits, preds, flat_targets_from_blobs(blobs), activation,
                                 rpn_min_level, batch_size_per_im)
    ref = rpn_losses_reference(logits, preds, blobs, activation, rpn_min_level, batch_size_per_im)
    assert sorted(out) == sorted(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-7)
    return out


def test_single_scale_rpn_sigmoid_and_softmax():
    logits = torch.tensor([[[[0.3, -1.2]], [[2.0, 0.1]]]], requires_grad=True)    # (1, 2, 1, 2)
    labels = torch.tensor([[[[1, 0]], [[-1, 1]]]], dtype=torch.int32)
    pred = torch.zeros(1, 8, 1, 2, requires_grad=True)
    t = {'rpn_labels_int32': labels, 'rpn_bbox_targets': torch.ones(1, 8, 1, 2),
         'rpn_bbox_inside_weights': torch.ones(1, 8, 1, 2),
         'rpn_bbox_outside_weights': torch.full((1, 8, 1, 2), 0.5)}
    out = _rpn(logits, pred, t, 'sigmoid')
    exp = (_bce(0.3, 1) + _bce(-1.2, 0) + _bce(0.1, 1)) / 3          # 3 labelled anchors
    assert out['loss_rpn_cls'].item() == pytest.approx(exp, rel=1e-6)
    # |0 - 1| = 1 >= 1/9: 1 - 1/18 per element, times 0.5, 16 elements, over N = 1
    assert out['loss_rpn_bbox'].item() == pytest.approx(16 * 0.5 * (1 - 1 / 18), rel=1e-6)
    logits.grad = pred.grad = None
    (out['loss_rpn_cls'] + out['loss_rpn_bbox']).backward()
    assert logits.grad[0, 1, 0, 0] == 0                                 # ignored anchor
    assert logits.grad[0, 0, 0, 0] == pytest.approx((torch.sigmoid(torch.tensor(0.3)) - 1) / 3)
    assert torch.allclose(pred.grad, torch.full_like(pred, -0.5))
    # softmax: (N, 2A, H, W), channels [0, A) background, [A, 2A) object
    sm = torch.tensor([[[[0.2]], [[1.0]]]])                             # A = 1
    t1 = {k: v[:, :4, :, :1] for k, v in t.items() if k != 'rpn_labels_int32'}
    t1['rpn_labels_int32'] = torch.ones(1, 1, 1, 1, dtype=torch.int32)
    out = _rpn(sm, torch.zeros(1, 4, 1, 1), t1, 'softmax')
    assert out['loss_rpn_cls'].item() == pytest.approx(math.log1p(math.exp(0.2 - 1.0)), rel=1e-6)
    with pytest.raises(ValueError, match='do not match the targets'):
        losses.rpn_losses_flat(logits, pred, flat_targets_from_blobs([t]), 'softmax', 2, 256)
    with pytest.raises(ValueError, match="'sigmoid' or 'softmax'"):
        losses.rpn_losses_flat(logits, pred, flat_targets_from_blobs([t]), 'relu', 2, 256)
    # nothing labelled: zero, not NaN
    t['rpn_labels_int32'] = -torch.ones_like(labels)
    assert _rpn(logits, pred, t, 'sigmoid')['loss_rpn_cls'] == 0


def test_fpn_rpn_losses_names_and_normaliser():
    N = 2
    logits = [torch.zeros(N, 3, 4, 4), torch.zeros(N, 3, 2, 2)]
    preds = [torch.zeros(N, 12, 4, 4), torch.zeros(N, 12, 2, 2)]
    targets = []
    for h in (4, 2):
        lab = -torch.ones(N, 3, h, h, dtype=torch.int32)
        lab[:, 0, 0, 0] = 1
        lab[:, 1, 0, 0] = 0
        targets.append({'rpn_labels_int32': lab,
                        'rpn_bbox_targets': torch.zeros(N, 12, h, h),
                        'rpn_bbox_inside_weights': torch.zeros(N, 12, h, h),
                        'rpn_bbox_outside_weights': torch.zeros(N, 12, h, h)})
    out = _rpn(logits, preds, targets, 'sigmoid', rpn_min_level=2, batch_size_per_im=256)
    assert sorted(out) == ['loss_rpn_bbox_fpn2', 'loss_rpn_bbox_fpn3', 'loss_rpn_cls_fpn2',
                           'loss_rpn_cls_fpn3']
    # 4 labelled anchors with logit 0 -> 4 log 2, over RPN_BATCH_SIZE_PER_IM * N (not the count)
    assert out['loss_rpn_cls_fpn3'].item() == pytest.approx(4 * math.log(2) / 512, rel=1e-6)
    out = losses.rpn_losses_flat(logits, preds, flat_targets_from_blobs(targets), 'sigmoid', 3,
                                 128, ims_per_batch=4)
    assert out['loss_rpn_cls_fpn4'].item() == pytest.approx(4 * math.log(2) / 512, rel=1e-6)
    with pytest.raises(ValueError, match='one of each per level'):
        losses.rpn_losses_flat(logits, preds[:1], flat_targets_from_blobs(targets), 'sigmoid',
                               2, 256)


@pytest.mark.parametrize('activation', ['sigmoid', 'softmax'])
@pytest.mark.parametrize('fpn', [True, False])
def test_flat_rpn_losses_equal_the_per_level_reference(activation, fpn):
    # The training path (anchor-order targets, one pass over all levels) against the level-by-
    # level reference on Detectron's per-level blobs, built from the same random draws.
    from pydetectron.modeling.generate_anchors import generate_anchors
    from pydetectron.modeling.generate_proposals import shifted_anchors
    from pydetectron.modeling.targets import (
        RpnTargetParams, rpn_anchor_targets, rpn_anchor_targets_flat)
    sizes = [(16, 24), (8, 12), (4, 6)] if fpn else [(8, 12)]
    anchors = [shifted_anchors(torch.as_tensor(generate_anchors(2. ** (k + 2), (16. * 2 ** k,),
                                                                (0.5, 1, 2))).float(), h, w,
                               2. ** (k + 2)) for k, (h, w) in enumerate(sizes)]
    gt = [{'boxes': torch.tensor([[4., 6., 30., 40.], [20., 10., 60., 50.]]),
           'gt_classes': torch.tensor([3, 7]), 'is_crowd': torch.tensor([False, False])},
          {'boxes': torch.tensor([[0., 0., 50., 30.]]), 'gt_classes': torch.tensor([1]),
           'is_crowd': torch.tensor([False])}]
    im_info = torch.tensor([[64., 96., 1.], [60., 90., 1.]])
    params = RpnTargetParams(straddle_thresh=0, positive_overlap=0.7, negative_overlap=0.3,
                             fg_fraction=0.5, batch_size_per_im=64)
    flat = rpn_anchor_targets_flat(anchors, sizes, gt, im_info, params,
                                   generator=torch.Generator().manual_seed(5))
    blobs = rpn_anchor_targets(anchors, sizes, gt, im_info, params,
                               generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(1)
    c = 6 if activation == 'softmax' else 3
    logits = [torch.randn(2, c, h, w, generator=g) for h, w in sizes]
    preds = [torch.randn(2, 12, h, w, generator=g) * 0.3 for h, w in sizes]
    if not fpn:
        logits, preds = logits[0], preds[0]
    ref = rpn_losses_reference(logits, preds, blobs, activation, 2, 64)
    out = losses.rpn_losses_flat(logits, preds, flat, activation, 2, 64)
    assert sorted(out) == sorted(ref) and len(out) == (6 if fpn else 2)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-7)
    assert any(ref[k].item() > 0 for k in ref if 'bbox' in k)  # some positives were drawn
    with pytest.raises(ValueError, match='do not match the targets'):
        losses.rpn_losses_flat(logits if not fpn else logits[::-1], preds if not fpn else
                               preds[::-1], flat if fpn else dict(flat, level_shapes=[(1, 1, 3)]),
                               activation, 2, 64)


def test_fast_rcnn_losses_and_accuracy():
    score = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], requires_grad=True)
    labels = torch.tensor([0, 1], dtype=torch.int32)
    bbox_pred = torch.zeros(2, 12, requires_grad=True)
    targets = torch.zeros(2, 12)
    targets[1, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.0])
    inside = torch.zeros(2, 12)
    inside[1, 4:8] = 1
    loss_cls, loss_bbox, acc = losses.fast_rcnn_losses(score, bbox_pred, labels, targets,
                                                       inside, inside)
    lse0 = math.log(math.exp(2) + math.exp(.5) + math.exp(-1))
    lse1 = math.log(math.exp(.1) + math.exp(.2) + math.exp(.3))
    assert loss_cls.item() == pytest.approx(((lse0 - 2) + (lse1 - .2)) / 2, rel=1e-6)
    assert loss_bbox.item() == pytest.approx((0.125 + 1.5) / 2)     # beta 1, over R = 2
    assert acc.item() == 0.5                                         # roi 1 predicts class 2
    (loss_cls + loss_bbox).backward()
    assert bbox_pred.grad[0].abs().sum() == 0 and bbox_pred.grad[1, 4:8].abs().sum() > 0
    # no RoIs: zeros connected to the graph
    z = losses.fast_rcnn_losses(score[:0], bbox_pred[:0], labels[:0], targets[:0], inside[:0],
                                inside[:0])
    assert z[0].item() == 0 and z[0].requires_grad


def test_mask_loss_compact_equals_detectron_layout():
    g = torch.Generator().manual_seed(0)
    R, C, M = 3, 4, 5
    pred = torch.randn(R, C, M, M, generator=g, requires_grad=True)
    masks = (torch.rand(R, M, M, generator=g) > 0.5).to(torch.int32)
    masks[2] = -1                                   # an ignored (no-foreground) RoI
    labels = torch.tensor([2, 3, 0], dtype=torch.int32)
    compact = losses.mask_rcnn_losses(pred, masks, labels, weight=1.0)
    full = expand_to_class_specific_mask_targets(masks, labels, C)
    detectron = losses.mask_rcnn_losses(pred, full, weight=1.0)
    # by hand: mean BCE over the 2 x M x M valid entries of each RoI's class channel
    x = torch.stack([pred[0, 2], pred[1, 3]]).detach()
    y = masks[:2].float()
    hand = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert compact.item() == pytest.approx(hand.item(), rel=1e-6)
    assert detectron.item() == pytest.approx(hand.item(), rel=1e-6)
    assert losses.mask_rcnn_losses(pred, masks, labels, weight=2.0).item() == \
        pytest.approx(2 * hand.item(), rel=1e-6)
    compact.backward()
    assert pred.grad[2].abs().sum() == 0 and pred.grad[0, 1].abs().sum() == 0
    assert pred.grad[0, 2].abs().sum() > 0
    # class-agnostic head (C = 1)
    one = losses.mask_rcnn_losses(pred[:, :1], masks, weight=1.0)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(pred[:2, 0].detach(), y)
    assert one.item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match='mask_labels_int32'):
        losses.mask_rcnn_losses(pred, masks, weight=1.0)


def test_keypoint_loss_hand_value_and_normaliser():
    pred = torch.tensor([[[[1., 0.], [0., 0.]], [[0., 3.], [0., 0.]]]], requires_grad=True)
    target = torch.tensor([0, 1], dtype=torch.int32)
    weights = torch.tensor([1., 0.])
    ce0 = -1 + math.log(math.exp(1) + 3)
    out = losses.keypoint_losses(pred, target, weights, normalize_by_visible=True, loss_weight=1.)
    assert out.item() == pytest.approx(ce0, rel=1e-6)
    norm = torch.tensor(0.25)
    out = losses.keypoint_losses(pred, target, weights, norm, normalize_by_visible=False,
                                 loss_weight=2.)
    assert out.item() == pytest.approx(2 * 0.25 * ce0, rel=1e-6)
    out.backward()
    assert pred.grad[0, 1].abs().sum() == 0 and pred.grad[0, 0].abs().sum() > 0
    empty = losses.keypoint_losses(pred[:0], target[:0], weights[:0], normalize_by_visible=True,
                                   loss_weight=1.)
    assert empty.item() == 0
    with pytest.raises(ValueError, match='keypoint_loss_normalizer'):
        losses.keypoint_losses(pred, target, weights, normalize_by_visible=False, loss_weight=1.)


# ---------------------------------------------------------------------------------------------- #
# A whole training step of Generalized_RCNN with these targets and losses (the model's
# ``training_losses`` calls ``losses.generalized_rcnn_losses``)
# ---------------------------------------------------------------------------------------------- #

SMALL_TRAIN = ["MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False, "TRAIN.BATCH_SIZE_PER_IM", 32,
               "TRAIN.RPN_PRE_NMS_TOP_N", 300, "TRAIN.RPN_POST_NMS_TOP_N", 100,
               "TRAIN.RPN_BATCH_SIZE_PER_IM", 64]


def _train_step(config, ann, extra=()):
    import os
    import sys
    from pydetectron.core.config import (
        assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list)
    from pydetectron.modeling.model_builder import Generalized_RCNN
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'targets'))
    from _targets_coco import batch, load_roidb, pick_entries

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    merge_cfg_from_file(os.path.join(root, config))
    merge_cfg_from_list(SMALL_TRAIN + list(extra))
    assert_and_infer_cfg()
    torch.manual_seed(0)
    model = Generalized_RCNN().train()  # its training_losses is losses.generalized_rcnn_losses
    return model, cfg


@pytest.mark.parametrize('config,ann', [
    ('configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml', 'instances_train2017.json'),
    ('configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml', 'person_keypoints_train2017.json'),
    ('configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml', 'instances_train2017.json'),
])
def test_generalized_rcnn_training_step(config, ann, coco_mini, fresh_cfg):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'targets'))
    from _targets_coco import batch, load_roidb, pick_entries
    c4 = 'C4' in config
    extra = ["TRAIN.BATCH_SIZE_PER_IM", 8, "TRAIN.RPN_POST_NMS_TOP_N", 16] if c4 else []
    model, cfg = _train_step(config, ann, extra)
    roidb = load_roidb(coco_mini, ann)
    entries = pick_entries(roidb, 2, min_gt=2, need_keypoints='keypoint' in ann)
    scales = [0.25, 0.2] if not c4 else [0.15, 0.15]
    gt, im_info = batch(entries, scales)
    H = int(-(-im_info[:, 0].max().item() // 32) * 32)
    W = int(-(-im_info[:, 1].max().item() // 32) * 32)
    data = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 50
    out = model(data, im_info, gt)
    names = set(out['losses'])
    if cfg.FPN.FPN_ON:
        assert {'loss_rpn_cls_fpn%d' % l for l in range(2, 7)} <= names
        assert {'loss_rpn_bbox_fpn%d' % l for l in range(2, 7)} <= names
    else:
        assert {'loss_rpn_cls', 'loss_rpn_bbox'} <= names
    assert {'loss_cls', 'loss_bbox'} <= names
    assert ('loss_mask' in names) == cfg.MODEL.MASK_ON
    assert ('loss_kps' in names) == cfg.MODEL.KEYPOINTS_ON
    assert 0 <= out['metrics']['accuracy_cls'].item() <= 1
    total = sum(out['losses'].values())
    assert torch.isfinite(total)
    total.backward()
    heads = [model.RPN, model.Box_Outs, model.Mask_Outs, model.Keypoint_Outs]
    for head in heads:
        if head is not None:
            grads = [p.grad for p in head.parameters() if p.requires_grad]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)


def test_precomputed_proposals_keep_their_original_boxes():
    """Fast R-CNN's proposals are roidb rows (gt_classes 0): their original-scale boxes go to the
    targets as they are (Detectron labels the roidb's own boxes)."""
    from pydetectron.modeling.losses import _precomputed_proposals
    orig = [torch.tensor([[1., 2., 30., 40.], [3.3, 4.1, 50.7, 60.2], [5., 6., 7., 8.]]),
            torch.tensor([[0.5, 0.5, 9.25, 9.75]])]
    s = torch.tensor([0.6, 1.7])
    roidb = [{'boxes': o * si, 'boxes_orig': o, 'gt_classes': torch.tensor(c)}
             for o, si, c in zip(orig, s, ([2, 0, 0], [0]))]
    rois, rois_orig = _precomputed_proposals(roidb, 'cpu')
    assert torch.equal(rois, torch.tensor([[0.] + (orig[0][1] * s[0]).tolist(),
                                           [0.] + (orig[0][2] * s[0]).tolist(),
                                           [1.] + (orig[1][0] * s[1]).tolist()]))
    assert torch.equal(rois_orig, torch.cat([orig[0][1:], orig[1]]))
    del roidb[1]['boxes_orig']
    assert _precomputed_proposals(roidb, 'cpu')[1] is None


# ---------------------------------------------------------------------------------------------- #
# Fixed target shapes (no host synchronisation from the proposals to the losses)
# ---------------------------------------------------------------------------------------------- #

def test_fast_rcnn_losses_with_padding_rows_are_those_of_the_valid_rows():
    g = torch.Generator().manual_seed(3)
    R, K = 7, 4
    score = torch.randn(R, K, generator=g)
    pred = torch.randn(R, 4 * K, generator=g)
    labels = torch.tensor([2, 0, 1, 0, 3, 0, 0], dtype=torch.int32)
    targets = torch.randn(R, 4 * K, generator=g)
    inside, _ = _inside_weights(labels, K)
    valid = torch.tensor([True, True, True, False, True, False, True])
    # padding rows: label -1, no box weights, any features
    pad_labels = torch.where(valid, labels, -1)
    pad_inside = inside * valid.unsqueeze(1)
    s1, p1 = score.clone().requires_grad_(), pred.clone().requires_grad_()
    cls, box, acc = losses.fast_rcnn_losses(s1, p1, pad_labels, targets, pad_inside, pad_inside,
                                            valid)
    s2, p2 = score[valid].clone().requires_grad_(), pred[valid].clone().requires_grad_()
    cls_c, box_c, acc_c = losses.fast_rcnn_losses(s2, p2, labels[valid], targets[valid],
                                                  inside[valid], inside[valid])
    assert cls.item() == pytest.approx(cls_c.item(), rel=1e-6)
    assert box.item() == pytest.approx(box_c.item(), rel=1e-6)
    assert acc.item() == pytest.approx(acc_c.item(), rel=1e-6)
    (cls + box).backward()
    (cls_c + box_c).backward()
    torch.testing.assert_close(s1.grad[valid], s2.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(p1.grad[valid], p2.grad, rtol=1e-6, atol=1e-7)
    assert s1.grad[~valid].abs().sum() == 0 and p1.grad[~valid].abs().sum() == 0


def _inside_weights(labels, K):
    w = torch.zeros(labels.shape[0], 4 * K)
    for i, c in enumerate(labels.tolist()):
        if c > 0:
            w[i, 4 * c:4 * c + 4] = 1
    return w, None


def test_fixed_target_shapes_are_chosen_by_device_and_model(fresh_cfg):
    from types import SimpleNamespace
    m = SimpleNamespace(faster_rcnn=True, rpn_only=False, Keypoint_Head=None, RPN=object())
    assert not losses.fixed_target_shapes(m, 'cpu')
    assert losses.fixed_target_shapes(m, 'cuda')
    m.fixed_target_shapes = True
    assert losses.fixed_target_shapes(m, 'cpu')
    assert not losses.fixed_target_shapes(m, 'cpu', rois=torch.zeros(1, 5))   # given RoIs
    m.fixed_target_shapes = False
    assert not losses.fixed_target_shapes(m, 'cuda')
    for key, value in (('Keypoint_Head', object()), ('faster_rcnn', False), ('rpn_only', True)):
        other = SimpleNamespace(**{**vars(m), key: value, 'fixed_target_shapes': True})
        assert not losses.fixed_target_shapes(other, 'cuda')


@pytest.mark.parametrize('config', ['configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml',
                                    'configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml'])
def test_fixed_target_shapes_train_as_the_unpadded_targets(config, coco_mini, fresh_cfg,
                                                            monkeypatch):
    """The same step with padded proposals and fixed RoI slots (the CUDA default) and with the
    unpadded targets: the same sampled RoIs and mask targets in the valid rows, the same
    losses and gradients (the sums only in another order)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'targets'))
    from _targets_coco import batch, load_roidb, pick_entries
    from pydetectron.modeling import targets as T
    model, cfg = _train_step(config, 'instances_train2017.json',
                             ["TRAIN.BATCH_SIZE_PER_IM", 64])
    entries = pick_entries(load_roidb(coco_mini), 2, min_gt=2)
    gt, im_info = batch(entries, [0.25, 0.2] if 'FPN' in config else [0.15, 0.15])
    H = int(-(-im_info[:, 0].max().item() // 32) * 32)
    W = int(-(-im_info[:, 1].max().item() // 32) * 32)
    data = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 50
    seen = []
    real = T.generate_proposal_labels

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(T, 'generate_proposal_labels', spy)
    runs = []
    for fixed in (False, True):
        model.fixed_target_shapes = fixed
        model.target_generator = torch.Generator().manual_seed(5)
        model.zero_grad()
        out = model(data, im_info, gt)
        sum(out['losses'].values()).backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}))
    compact, padded = seen
    valid, mask_valid = padded['roi_valid'], padded['mask_roi_valid']
    B = 64
    assert padded['rois'].shape[0] == 2 * B and 'roi_valid' not in compact
    assert padded['mask_rois'].shape[0] == 2 * round(0.25 * B)
    assert not valid.all() and not mask_valid.all()   # padding rows were there
    for key in ('rois', 'labels_int32', 'bbox_targets', 'bbox_inside_weights'):
        assert torch.equal(padded[key][valid], compact[key]), key
    assert (padded['labels_int32'][~valid] == -1).all()
    for key in ('mask_rois', 'masks_int32', 'mask_labels_int32'):
        assert torch.equal(padded[key][mask_valid], compact[key]), key
    assert (padded['masks_int32'][~mask_valid] == -1).all()
    (out_c, grads_c), (out_p, grads_p) = runs
    for name, value in out_c['losses'].items():
        assert out_p['losses'][name].item() == pytest.approx(value.item(), rel=1e-6), name
    assert out_p['metrics']['accuracy_cls'].item() == out_c['metrics']['accuracy_cls'].item()
    assert grads_c.keys() == grads_p.keys()
    for name, gc in grads_c.items():
        scale = gc.abs().max().clamp(min=1e-30)
        assert ((grads_p[name] - gc).abs().max() / scale).item() < 4e-6, name
