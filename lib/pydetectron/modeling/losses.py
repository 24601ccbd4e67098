"""Detectron's training losses on the heads' outputs and the targets of ``modeling.targets``.

Every loss is normalised exactly as its Caffe2 op in Detectron (or, where Detectron has no such
option, as Detectron.pytorch), so the loss values and gradients match Detectron's per GPU:

    loss_rpn_cls        sigmoid cross-entropy over anchors with label >= 0, divided by their
                        count (single-scale RPN: ``SigmoidCrossEntropyLoss``, normalize=1);
                        with ``RPN.CLS_ACTIVATION == 'softmax'``, 2-way softmax cross-entropy
                        on Detectron.pytorch's (N, 2A, H, W) = (bg logits of the A anchors, then
                        fg logits) layout, same normaliser
    loss_rpn_cls_fpnL   per FPN level: the sum over labelled anchors divided by
                        ``RPN_BATCH_SIZE_PER_IM * images`` (FPN.py: normalize=0 and that scale)
    loss_rpn_bbox(_fpnL) smooth-L1 with beta 1/9 (Detectron's sigma 3), outside weights
                        1 / #labelled anchors of the image, summed and divided by the images N
    loss_cls            softmax cross-entropy, mean over the sampled RoIs; ``accuracy_cls``
                        top-1 accuracy over them
    loss_bbox           smooth-L1 with beta 1 on the class's 4 columns, summed / #RoIs
    loss_mask           sigmoid cross-entropy over the mask targets != -1, divided by their
                        count, times ``MRCNN.WEIGHT_LOSS_MASK``
    loss_kps            softmax over the HEATMAP_SIZE^2 cells of each keypoint, weighted by
                        visibility and divided by the number of visible keypoints; times
                        ``keypoint_loss_normalizer`` unless ``KRCNN.NORMALIZE_BY_VISIBLE_
                        KEYPOINTS``; times ``KRCNN.LOSS_WEIGHT``

Detectron also multiplies each loss by ``1 / NUM_GPUS`` (``GetLossScale``) because Caffe2 *sums*
the gradients of its GPUs; PyTorch's DataParallel (losses averaged after the gather) and
DistributedDataParallel (gradients averaged) already average, so there is no such factor here.

Every loss is a scalar tensor connected to its input even when there is nothing to learn from
(it is then 0), so that backward always reaches every parameter.

Fixed target shapes (``fixed_target_shapes``, the default on CUDA for end-to-end Faster / Mask
R-CNN): the proposals, the sampled RoIs and the mask RoIs come in counts fixed by the shapes and
the config (padding rows flagged), so a step queues its whole forward and backward without
waiting for the device; the padding rows weigh nothing and each loss keeps its normaliser (the
count of valid RoIs), so the values are those of the unpadded targets.

No function here reads the global config: the settings are arguments, and the model reads them
from the config once, when it is built (``GeneralizedRcnnLossParams.from_cfg``).
"""
from collections import namedtuple

import torch
import torch.nn.functional as F


class GeneralizedRcnnLossParams(namedtuple("GeneralizedRcnnLossParams", [
        "rpn_targets",             # a targets.RpnTargetParams
        "rpn_cls_activation",      # RPN.CLS_ACTIVATION: 'sigmoid' or 'softmax'
        "rpn_min_level",           # FPN.RPN_MIN_LEVEL (the first level of the FPN loss names)
        "rpn_batch_size_per_im",   # TRAIN.RPN_BATCH_SIZE_PER_IM (the FPN cls loss normaliser)
        "roi_targets",             # a targets.RoiTargetParams
        "mask_loss_weight",        # MRCNN.WEIGHT_LOSS_MASK
        "kps_normalize_by_visible",  # KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS
        "kps_loss_weight",         # KRCNN.LOSS_WEIGHT
        "share_res5",              # MODEL.SHARE_RES5
])):
    """The settings of ``generalized_rcnn_losses``: targets and losses of a training step."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        from pydetectron.modeling.targets import RoiTargetParams, RpnTargetParams
        return cls(RpnTargetParams.from_cfg(cfg), cfg.RPN.CLS_ACTIVATION,
                   int(cfg.FPN.RPN_MIN_LEVEL), int(cfg.TRAIN.RPN_BATCH_SIZE_PER_IM),
                   RoiTargetParams.from_cfg(cfg),
                   cfg.MRCNN.WEIGHT_LOSS_MASK, cfg.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS,
                   cfg.KRCNN.LOSS_WEIGHT, cfg.MODEL.SHARE_RES5)


def _check_same(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError('%s has shape %s but %s has shape %s; they must match'
                         % (name_a, tuple(a.shape), name_b, tuple(b.shape)))


def smooth_l1_loss(bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights,
                   beta=1.0):
    """Detectron's SmoothL1Loss: sum(out * SL1(in * (pred - target))) / pred.shape[0], where
    SL1(x) = 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta."""
    _check_same('bbox_pred', bbox_pred, 'bbox_targets', bbox_targets)
    N = max(bbox_pred.shape[0], 1)
    return _smooth_l1_sum(bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights,
                          beta) / N


def _smooth_l1_sum(bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights, beta):
    diff = bbox_inside_weights * (bbox_pred - bbox_targets)
    abs_diff = diff.abs()
    per_elem = torch.where(abs_diff < beta, 0.5 * diff * diff / beta, abs_diff - 0.5 * beta)
    return (bbox_outside_weights * per_elem).sum()


def rpn_losses_flat(rpn_cls_logits, rpn_bbox_pred, flat_targets, cls_activation,
                    rpn_min_level, batch_size_per_im, ims_per_batch=None):
    """RPN losses by Detectron's names from the targets of ``targets.rpn_anchor_targets_flat``.

    Single scale: ``rpn_cls_logits`` (N, A, H, W) (or (N, 2A, H, W) for softmax) and
    ``rpn_bbox_pred`` (N, 4A, H, W) tensors -> {'loss_rpn_cls', 'loss_rpn_bbox'}.
    FPN: lists of per-level outputs (finest first, level ``rpn_min_level`` =
    ``FPN.RPN_MIN_LEVEL`` first) -> {'loss_rpn_cls_fpn2', 'loss_rpn_bbox_fpn2', ...}.
    ``cls_activation``: ``RPN.CLS_ACTIVATION``; ``batch_size_per_im``:
    ``TRAIN.RPN_BATCH_SIZE_PER_IM``; ``ims_per_batch`` (FPN normaliser) defaults to N, the
    images of this blob (Detectron's per-GPU ``TRAIN.IMS_PER_BATCH``).

    The head's outputs of all levels are put in anchor order once and each loss is one
    elementwise pass, summed per level -- a few operators for the whole pyramid instead of a
    dozen per level. (The tests keep a level-by-level reference of the same losses.)
    """
    activation = cls_activation
    if activation not in ('sigmoid', 'softmax'):
        raise ValueError("RPN.CLS_ACTIVATION must be 'sigmoid' or 'softmax', got %r" % activation)
    single = torch.is_tensor(rpn_cls_logits)
    logits = [rpn_cls_logits] if single else list(rpn_cls_logits)
    preds = [rpn_bbox_pred] if single else list(rpn_bbox_pred)
    shapes = flat_targets['level_shapes']
    labels = flat_targets['labels']                                          # (N, T)
    N = labels.shape[0]
    if not (len(logits) == len(preds) == len(shapes)):
        raise ValueError('rpn_losses_flat: %d cls logits, %d bbox preds and %d target levels; '
                         'one of each per level' % (len(logits), len(preds), len(shapes)))
    flat_logits, flat_preds = [], []
    for x, p, (H, W, A) in zip(logits, preds, shapes):
        want = (N, (2 if activation == 'softmax' else 1) * A, H, W)
        if tuple(x.shape) != want or tuple(p.shape) != (N, 4 * A, H, W):
            raise ValueError('rpn_losses_flat: rpn_cls_logits %s / rpn_bbox_pred %s do not match '
                             'the targets of a %dx%d map of %d anchors (%d images); expected %s '
                             'and %s' % (tuple(x.shape), tuple(p.shape), H, W, A, N, want,
                                         (N, 4 * A, H, W)))
        if activation == 'softmax':  # channels [0, A) background, [A, 2A) foreground
            flat_logits.append(x.view(N, 2, A, H, W).permute(0, 3, 4, 2, 1).reshape(N, -1, 2))
        else:
            flat_logits.append(x.permute(0, 2, 3, 1).reshape(N, -1))
        flat_preds.append(p.permute(0, 2, 3, 1).reshape(N, -1, 4))
    x = torch.cat(flat_logits, dim=1)
    pred = torch.cat(flat_preds, dim=1)                                      # (N, T, 4)
    labelled = labels >= 0
    if activation == 'softmax':
        cls_terms = F.cross_entropy(x.reshape(-1, 2), labels.reshape(-1), ignore_index=-1,
                                    reduction='none').view(N, -1)
    else:
        cls_terms = F.binary_cross_entropy_with_logits(
            x, labels.clamp(min=0).to(x.dtype), labelled.to(x.dtype), reduction='none')
    diff = flat_targets['inside_w'] * (pred - flat_targets['targets'])
    abs_diff = diff.abs()
    beta = 1. / 9.
    sl1 = torch.where(abs_diff < beta, 0.5 * diff * diff / beta, abs_diff - 0.5 * beta)
    bbox_terms = (flat_targets['outside_w'] * sl1).sum(dim=2)                # (N, T)
    if single:
        # Caffe2 divides by max(count, 1e-5): no labelled anchor gives a zero loss.
        count = labelled.sum().clamp(min=1).to(cls_terms.dtype)
        return {'loss_rpn_cls': cls_terms.sum() / count,
                'loss_rpn_bbox': bbox_terms.sum() / max(N, 1)}
    k_min = int(rpn_min_level)
    n_im = N if ims_per_batch is None else ims_per_batch
    sizes = [H * W * A for H, W, A in shapes]
    losses = {}
    for i, (c, b) in enumerate(zip(cls_terms.split(sizes, dim=1), bbox_terms.split(sizes, dim=1))):
        losses['loss_rpn_cls_fpn%d' % (k_min + i)] = c.sum() / float(batch_size_per_im * n_im)
        losses['loss_rpn_bbox_fpn%d' % (k_min + i)] = b.sum() / max(N, 1)
    return losses


def fast_rcnn_losses(cls_score, bbox_pred, labels_int32, bbox_targets, bbox_inside_weights,
                     bbox_outside_weights, roi_valid=None):
    """(loss_cls, loss_bbox, accuracy_cls) of the box head.

    cls_score: (R, K) **logits**; bbox_pred: (R, 4K) (or (R, 8) class-agnostic) deltas; the rest
    from ``fast_rcnn.sample_rois``. ``roi_valid`` (R,) bool (``sample_rois(...,
    fixed_slots=True)``): the rows flagged False are padding -- label -1, zero box weights --
    and the losses and accuracy are those of the valid rows alone (their mean over the valid
    count, as without padding).
    """
    labels = labels_int32.long()
    if cls_score.shape[0] != labels.shape[0]:
        raise ValueError('cls_score has %d rows but labels_int32 has %d'
                         % (cls_score.shape[0], labels.shape[0]))
    if labels.numel() == 0:
        zero = cls_score.sum() * 0 + bbox_pred.sum() * 0
        return zero, zero, cls_score.new_zeros(())
    if roi_valid is not None:
        _check_same('roi_valid', roi_valid, 'labels_int32', labels)
        count = roi_valid.sum().clamp(min=1).to(torch.float32)
        loss_cls = F.cross_entropy(cls_score, labels, ignore_index=-1, reduction='sum') / count
        _check_same('bbox_pred', bbox_pred, 'bbox_targets', bbox_targets)
        loss_bbox = _smooth_l1_sum(bbox_pred, bbox_targets, bbox_inside_weights,
                                   bbox_outside_weights, 1.0) / count
        hit = (cls_score.detach().argmax(dim=1) == labels) & roi_valid
        return loss_cls, loss_bbox, hit.sum().to(torch.float32) / count
    loss_cls = F.cross_entropy(cls_score, labels)
    loss_bbox = smooth_l1_loss(bbox_pred, bbox_targets, bbox_inside_weights,
                               bbox_outside_weights, beta=1.0)
    accuracy = (cls_score.detach().argmax(dim=1) == labels).to(cls_score.dtype).mean()
    return loss_cls, loss_bbox, accuracy


def mask_rcnn_losses(masks_pred, masks_int32, mask_labels_int32=None, *, weight):
    """loss_mask of (R, C, M, M) mask **logits**.

    ``masks_int32`` is either Detectron's layout -- (R, C * M * M) or (R, C, M, M) -- or the
    compact (R, M, M) of ``mask_rcnn_targets`` with ``mask_labels_int32`` (R,) naming the channel
    (channel 0 when C == 1, i.e. ``MRCNN.CLS_SPECIFIC_MASK`` off). Entries equal to -1 are ignored.
    ``weight``: ``MRCNN.WEIGHT_LOSS_MASK``.
    """
    R, C, M, _ = masks_pred.shape
    targets = masks_int32
    if targets.dim() == 3:
        _check_same('masks_int32 (compact)', targets, 'one channel of masks_pred',
                    masks_pred[:, 0])
        if C == 1:
            logits = masks_pred[:, 0]
        else:
            if mask_labels_int32 is None:
                raise ValueError('mask_rcnn_losses: (R, M, M) targets with %d mask channels need '
                                 'mask_labels_int32 to pick each RoI\'s channel' % C)
            logits = masks_pred[torch.arange(R, device=masks_pred.device),
                                mask_labels_int32.long()]
    else:
        logits = masks_pred
        targets = targets.reshape(masks_pred.shape)
    valid = (targets >= 0).to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0).to(logits.dtype), valid, reduction='sum')
    return weight * total / valid.sum().clamp(min=1)


def keypoint_losses(kps_pred, keypoint_locations_int32, keypoint_weights,
                    keypoint_loss_normalizer=None, *, normalize_by_visible, loss_weight):
    """loss_kps of (R, K, HS, HS) keypoint heatmap logits against ``keypoint_rcnn_targets``;
    ``normalize_by_visible``: ``KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS``, ``loss_weight``:
    ``KRCNN.LOSS_WEIGHT``."""
    R, K, H, W = kps_pred.shape
    if keypoint_locations_int32.numel() != R * K:
        raise ValueError('kps_pred has %d RoIs x %d keypoints but keypoint_locations_int32 has %d '
                         'entries' % (R, K, keypoint_locations_int32.numel()))
    # A softmax over space: each of the H * W cells is a class.
    ce = F.cross_entropy(kps_pred.reshape(R * K, H * W), keypoint_locations_int32.long().view(-1),
                         reduction='none')
    w = keypoint_weights.view(-1).to(ce.dtype)
    loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
    if not normalize_by_visible:
        if keypoint_loss_normalizer is None:
            raise ValueError('keypoint_losses: KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS is off, so '
                             'keypoint_loss_normalizer is needed')
        loss = loss * keypoint_loss_normalizer.detach()
    return loss_weight * loss


# ---------------------------------------------------------------------------------------------- #
# Generalized_RCNN in training: targets + heads + losses
# ---------------------------------------------------------------------------------------------- #

def _rpn_anchors(rpn, logits):
    """Every anchor of each RPN output map, ordered (H, W, A) like the head's channels."""
    maps = [logits] if torch.is_tensor(logits) else list(logits)
    return rpn.field_anchors(maps), [tuple(x.shape[-2:]) for x in maps]


def _precomputed_proposals(roidb, device):
    """Fast R-CNN on precomputed proposals: the roidb rows with gt_classes == 0, as (R, 5) rois,
    and (R, 4) the same rows at the original scale (the loader's ``boxes_orig``, where Detectron
    labels them) or None when the roidb lacks them."""
    rows, orig = [], []
    for n, entry in enumerate(roidb):
        is_prop = torch.as_tensor(entry['gt_classes']) == 0
        props = torch.as_tensor(entry['boxes'], dtype=torch.float32)[is_prop]
        rows.append(torch.cat([props.new_full((props.shape[0], 1), float(n)), props], dim=1))
        if entry.get('boxes_orig') is not None:
            orig.append(torch.as_tensor(entry['boxes_orig'], dtype=torch.float32)[is_prop])
    orig = torch.cat(orig).to(device) if len(orig) == len(roidb) else None
    return torch.cat(rows).to(device), orig


def fixed_target_shapes(model, device, rois=None):
    """Whether this training step's RoI targets take fixed shapes (no host synchronisation from
    the proposals to the losses: padded proposals, ``fixed_slots`` sampling): end-to-end Faster
    / Mask R-CNN (RPN proposals, no given ``rois``, no keypoints). ``model.fixed_target_shapes``
    chooses: None (default) = on a CUDA device, True / False = always / never when possible.
    The sampled RoIs and the losses are the same either way (padding rows weigh nothing); the
    RoI heads then run on BATCH_SIZE_PER_IM RoIs per image and its fg quota of mask RoIs."""
    choice = getattr(model, 'fixed_target_shapes', None)
    possible = (rois is None and model.faster_rcnn and not model.rpn_only
                and model.Keypoint_Head is None and model.RPN is not None)
    if not possible or choice is False:
        return False
    return True if choice else torch.device(device).type == 'cuda'


def generalized_rcnn_losses(model, blob_conv, rpn_ret, im_info, roidb, params, rois=None,
                            generator=None):
    """The training step of a ``Generalized_RCNN`` after its body and RPN: Detectron's targets
    (``modeling.targets``) on the model's device, the RoI heads on the sampled RoIs, the losses.

    Arguments as ``Generalized_RCNN.training_losses`` receives them (``blob_conv``: the RoI levels;
    ``rpn_ret``: the RPN's dict; ``rois``: precomputed proposals (R, 5) for Fast R-CNN, else taken
    from the roidb rows with ``gt_classes == 0``). Returns ``{'losses': {...}, 'metrics': {...}}``
    with Detectron's names. ``params``: a ``GeneralizedRcnnLossParams``. With
    ``MODEL.SHARE_RES5`` the box head's res5 features of the sampled RoIs feed the mask head
    (gathered by ``roi_has_mask_int32``), as Detectron does.

    A keypoint model without an RPN (Fast R-CNN on precomputed proposals) also returns
    ``'minibatch_valid'``: a () float32 tensor, 1 when the sampled keypoint RoIs hold more than
    ``KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH`` visible keypoints, else 0 -- the trainer
    then drops the minibatch and draws the next one, as Detectron's loader does
    (``engine/trainer.py``).
    """
    from pydetectron.modeling import targets as T
    roi_params = params.roi_targets
    device = im_info.device
    # Order matters on the GPU: everything up to the proposals is queued without a host sync
    # (the ground-truth copies, the RPN targets and losses) while the body still runs. With
    # fixed target shapes (the CUDA default) nothing after it syncs either; otherwise the
    # proposals, the sampled RoIs and the mask RoIs each read their count on the host.
    gt = T.pack_gt(roidb, device, with_keypoints=model.keypoints_on)
    fixed = fixed_target_shapes(model, device, rois)
    polys = None
    if roi_params.mask_resolution is not None and not model.rpn_only:
        polys = T.pack_polygons(roidb, gt.valid.shape[1], device)
    out_losses, metrics = {}, {}

    if rpn_ret is not None:
        logits, deltas = rpn_ret['rpn_cls_logits'], rpn_ret['rpn_bbox_pred']
        anchors, sizes = _rpn_anchors(model.RPN, logits)
        rpn_t = T.rpn_anchor_targets_flat(anchors, sizes, gt, im_info, params.rpn_targets,
                                          generator=generator)
        out_losses.update(rpn_losses_flat(
            logits, deltas, rpn_t, params.rpn_cls_activation,
            getattr(model.RPN, 'k_min', params.rpn_min_level), params.rpn_batch_size_per_im))
    if model.rpn_only:
        return {'losses': out_losses, 'metrics': metrics}

    proposals_orig = None
    if rois is not None:
        # given RoIs: Fast R-CNN's precomputed proposals, or boxes replacing the RPN's (in the
        # blob's scale: their original-scale copies are derived from them)
        proposals = torch.as_tensor(rois, dtype=torch.float32, device=device)
    elif model.faster_rcnn:
        if 'rpn_rois' not in rpn_ret:
            model.RPN.add_proposals(rpn_ret, im_info, padded=fixed)
        proposals = rpn_ret['rpn_rois']
    else:
        proposals, proposals_orig = _precomputed_proposals(roidb, device)
    blobs = T.generate_proposal_labels(proposals.detach(), roidb, im_info, roi_params, generator,
                                       gt=gt, polys=polys, rois_orig=proposals_orig,
                                       rois_valid=rpn_ret.get('rpn_rois_valid') if fixed else None,
                                       fixed_slots=fixed)

    share_res5 = params.share_res5 and model.Mask_Head is not None
    if share_res5:
        res5_feat = model.Box_Head.forward_res5(blob_conv, blobs['rois'])
        # the box head's own pooling (Caffe2 AveragePool kernel 7, stride 1 on the 7 x 7 map)
        box_feat = F.avg_pool2d(res5_feat, kernel_size=7, stride=1)
    else:
        box_feat = model.Box_Head(blob_conv, blobs['rois'])
    cls_score, bbox_pred = model.Box_Outs(box_feat)
    loss_cls, loss_bbox, accuracy = fast_rcnn_losses(
        cls_score, bbox_pred, blobs['labels_int32'], blobs['bbox_targets'],
        blobs['bbox_inside_weights'], blobs['bbox_outside_weights'], blobs.get('roi_valid'))
    out_losses.update(loss_cls=loss_cls, loss_bbox=loss_bbox)
    metrics['accuracy_cls'] = accuracy

    if model.Mask_Head is not None:
        if share_res5:
            mask_feat = model.Mask_Head.forward_from_res5(res5_feat[blobs['mask_inds']])
        else:
            mask_feat = model.Mask_Head(blob_conv, blobs['mask_rois'])
        out_losses['loss_mask'] = mask_rcnn_losses(
            model.Mask_Outs(mask_feat), blobs['masks_int32'], blobs['mask_labels_int32'],
            weight=params.mask_loss_weight)

    if model.Keypoint_Head is not None:
        kps_pred = model.Keypoint_Outs(model.Keypoint_Head(blob_conv, blobs['keypoint_rois']))
        out_losses['loss_kps'] = keypoint_losses(
            kps_pred, blobs['keypoint_locations_int32'], blobs['keypoint_weights'],
            blobs['keypoint_loss_normalizer'], normalize_by_visible=params.kps_normalize_by_visible,
            loss_weight=params.kps_loss_weight)
    out = {'losses': out_losses, 'metrics': metrics}
    if model.Keypoint_Head is not None and not model.faster_rcnn:
        # Fast R-CNN on precomputed proposals: Detectron's loader computes this minibatch's
        # blobs itself and draws another minibatch when it has too few visible keypoints
        # (finalize_keypoint_minibatch). Its end-to-end path labels the RPN's proposals in an op
        # that ignores the verdict, so a model with an RPN has no such flag.
        out['minibatch_valid'] = blobs['keypoint_minibatch_valid'].to(torch.float32)
    return out
