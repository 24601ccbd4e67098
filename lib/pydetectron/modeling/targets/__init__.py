"""Detectron's training targets as device tensors, batched over the images of a blob.

    gt.py             per-image ground truth (the loader's roidb dicts) -> padded ``GtBatch``
    overlaps.py       IoU / intersection-over-area with +1 widths, broadcast over a batch
    sampling.py       random subsets per image (without / with replacement), on the device
    rpn.py            RPN anchor labels, regression targets and weights (``rpn_anchor_targets``)
    fast_rcnn.py      proposals + gt labelled and sampled, box targets (``label_proposals``,
                      ``sample_rois``)
    mask_rcnn.py      mask targets: gt polygons rasterized inside the fg RoIs
    rasterize.py      pycocotools-exact polygon scan conversion on the device
    keypoint_rcnn.py  keypoint heatmap labels, weights and loss normaliser
    retinanet.py      RetinaNet anchor labels, box targets, fg / bg counts (``retinanet_targets``)

``generate_proposal_labels`` below is the one call the model makes after its RPN in training:
the blobs Detectron's ``GenerateProposalLabels`` (or ``CollectAndDistributeFpnRpnProposals``)
op produces. Randomness comes from ``generator`` (a ``torch.Generator`` on the model's device)
or torch's global RNG.
"""
from pydetectron.core.config import cfg
from pydetectron.modeling.targets.fast_rcnn import (  # noqa: F401
    ProposalLabels, expand_bbox_targets, label_proposals, sample_rois)
from pydetectron.modeling.targets.gt import GtBatch, pack_gt  # noqa: F401
from pydetectron.modeling.targets.keypoint_rcnn import (  # noqa: F401
    keypoint_rcnn_targets, keypoints_to_heatmap_labels)
from pydetectron.modeling.targets.mask_rcnn import (  # noqa: F401
    PolygonBatch, expand_to_class_specific_mask_targets, mask_rcnn_targets, pack_polygons)
from pydetectron.modeling.targets.rpn import (  # noqa: F401
    rpn_anchor_targets, rpn_anchor_targets_flat)


def generate_proposal_labels(rois, roidb, im_info, generator=None, gt=None, polys=None,
                             rois_orig=None):
    """Training blobs for the RoI heads from the RPN proposals ``rois`` (R, 5) (blob scale).

    roidb: the loader's per-image ground-truth dicts of this blob; im_info: (N, 3). ``gt`` may
    pass an already packed ``GtBatch`` (e.g. the one used for the RPN targets; it must hold the
    keypoints when ``MODEL.KEYPOINTS_ON``), ``polys`` the roidb's already packed polygons
    (``pack_polygons``; packed here when None), ``rois_orig`` (R, 4) precomputed proposals at the
    original scale (``label_proposals``).
    Returns a dict of Detectron's blob names: rois, labels_int32, bbox_targets,
    bbox_inside_weights, bbox_outside_weights; with ``MODEL.MASK_ON`` mask_rois,
    roi_has_mask_int32, masks_int32 (R_m, M, M), mask_labels_int32; with
    ``MODEL.KEYPOINTS_ON`` keypoint_rois, keypoint_locations_int32, keypoint_weights,
    keypoint_loss_normalizer, keypoint_minibatch_valid. All on ``rois.device``.
    """
    device = rois.device
    if gt is None:
        gt = pack_gt(roidb, device, with_keypoints=cfg.MODEL.KEYPOINTS_ON)
    N = gt.valid.shape[0]
    labels = label_proposals(rois, gt, im_info, rois_orig=rois_orig)
    blobs = sample_rois(labels, N, generator=generator)
    if cfg.MODEL.MASK_ON:
        if polys is None:
            polys = pack_polygons(roidb, gt.valid.shape[1], device)
        blobs.update(mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], polys, gt, im_info,
                                       rois_orig=blobs['sampled_boxes']))
    if cfg.MODEL.KEYPOINTS_ON:
        blobs.update(keypoint_rcnn_targets(labels, gt, N, generator=generator))
    return blobs
