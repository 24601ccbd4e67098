"""A level-by-level reference of the RPN losses, for the loss tests.

The model computes its RPN losses in one pass over the anchors of all levels
(``modeling.losses.rpn_losses_flat``). This reference computes them the way Detectron's graph
does, one FPN level at a time on the head's layout -- labels (N, A, H, W), regression blobs
(N, 4A, H, W) as ``targets.rpn_anchor_targets`` returns them -- with its own smooth L1, so the
two share no code:

    single scale   loss_rpn_cls  = sum of the per-anchor losses over labels >= 0 / their count
                   loss_rpn_bbox = sum(out_w * SL1_{1/9}(in_w * (pred - target))) / N
    FPN level l    loss_rpn_cls_fpnl  = that sum / (RPN_BATCH_SIZE_PER_IM * N)
                   loss_rpn_bbox_fpnl = as single scale, on the level's anchors

``flat_targets_from_blobs`` turns per-level blobs into the anchor-order targets of
``targets.rpn_anchor_targets_flat`` (the inverse of its per-level split), so hand-made per-level
blobs can feed the package's loss too.
"""
import torch
import torch.nn.functional as F


def _smooth_l1_sum(pred, target, inside_w, outside_w, beta):
    x = inside_w * (pred - target)
    ax = x.abs()
    return (outside_w * torch.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)).sum()


def _cls_sum(logits, labels, activation):
    """(sum of the losses over labels >= 0, count of labels >= 0) of one level."""
    labels = labels.long()
    N, A, H, W = labels.shape
    if activation == 'softmax':
        assert logits.shape == (N, 2 * A, H, W), 'softmax RPN logits are (N, 2A, H, W)'
        # Detectron.pytorch's layout: channels [0, A) background, [A, 2A) foreground
        bg, fg = logits[:, :A], logits[:, A:]
        chosen = torch.where(labels == 1, fg, bg)
        per_anchor = torch.logsumexp(torch.stack([bg, fg]), dim=0) - chosen
    else:
        assert activation == 'sigmoid' and logits.shape == labels.shape
        y = labels.clamp(min=0).to(logits.dtype)
        per_anchor = F.softplus(logits) - logits * y           # binary cross-entropy of a logit
    labelled = labels >= 0
    return torch.where(labelled, per_anchor, per_anchor.new_zeros(())).sum(), labelled.sum()


def rpn_losses_reference(rpn_cls_logits, rpn_bbox_pred, blobs, cls_activation, rpn_min_level,
                         batch_size_per_im):
    """Detectron's RPN loss names and values from per-level blobs (a list, one dict a level)."""
    beta = 1. / 9.
    if torch.is_tensor(rpn_cls_logits):
        t = blobs[0]
        total, count = _cls_sum(rpn_cls_logits, t['rpn_labels_int32'], cls_activation)
        N = rpn_cls_logits.shape[0]
        return {'loss_rpn_cls': total / max(int(count), 1),
                'loss_rpn_bbox': _smooth_l1_sum(
                    rpn_bbox_pred, t['rpn_bbox_targets'], t['rpn_bbox_inside_weights'],
                    t['rpn_bbox_outside_weights'], beta) / N}
    out = {}
    for i, (x, p, t) in enumerate(zip(rpn_cls_logits, rpn_bbox_pred, blobs)):
        lvl, N = rpn_min_level + i, x.shape[0]
        total, _ = _cls_sum(x, t['rpn_labels_int32'], cls_activation)
        out['loss_rpn_cls_fpn%d' % lvl] = total / float(batch_size_per_im * N)
        out['loss_rpn_bbox_fpn%d' % lvl] = _smooth_l1_sum(
            p, t['rpn_bbox_targets'], t['rpn_bbox_inside_weights'],
            t['rpn_bbox_outside_weights'], beta) / N
    return out


def flat_targets_from_blobs(blobs):
    """Per-level blobs -> the dict of ``rpn_anchor_targets_flat`` (anchors in (H, W, A) order)."""
    labels, targets, inside, outside, shapes = [], [], [], [], []
    for t in blobs:
        N, A, H, W = t['rpn_labels_int32'].shape
        labels.append(t['rpn_labels_int32'].permute(0, 2, 3, 1).reshape(N, -1).long())
        for out, key in ((targets, 'rpn_bbox_targets'), (inside, 'rpn_bbox_inside_weights'),
                         (outside, 'rpn_bbox_outside_weights')):
            out.append(t[key].reshape(N, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4))
        shapes.append((H, W, A))
    return {'labels': torch.cat(labels, 1), 'targets': torch.cat(targets, 1),
            'inside_w': torch.cat(inside, 1), 'outside_w': torch.cat(outside, 1),
            'level_shapes': shapes}
