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

No function here reads the global config: each takes its settings as a small frozen record
(``RpnTargetParams``, ``FastRcnnTargetParams``, ``KeypointTargetParams``, ``RoiTargetParams``,
``targets.retinanet.RetinaNetTargetParams``) whose ``from_cfg()`` the model calls once when
it is built.
"""
from collections import namedtuple

from pydetectron.modeling.targets.fast_rcnn import (  # noqa: F401
    FastRcnnTargetParams, ProposalLabels, expand_bbox_targets, fg_rois_per_image,
    label_proposals, sample_rois)
from pydetectron.modeling.targets.gt import GtBatch, pack_gt  # noqa: F401
from pydetectron.modeling.targets.keypoint_rcnn import (  # noqa: F401
    KeypointTargetParams, keypoint_rcnn_targets, keypoints_to_heatmap_labels)
from pydetectron.modeling.targets.mask_rcnn import (  # noqa: F401
    PolygonBatch, expand_to_class_specific_mask_targets, mask_rcnn_targets, pack_polygons)
from pydetectron.modeling.targets.rpn import (  # noqa: F401
    RpnTargetParams, rpn_anchor_targets, rpn_anchor_targets_flat)


class RoiTargetParams(namedtuple("RoiTargetParams", [
        "fast_rcnn",        # a FastRcnnTargetParams
        "mask_resolution",  # MRCNN.RESOLUTION, or None without MODEL.MASK_ON
        "keypoints",        # a KeypointTargetParams, or None without MODEL.KEYPOINTS_ON
])):
    """The settings of ``generate_proposal_labels``: which RoI heads train, and their targets'."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        return cls(FastRcnnTargetParams.from_cfg(cfg),
                   int(cfg.MRCNN.RESOLUTION) if cfg.MODEL.MASK_ON else None,
                   KeypointTargetParams.from_cfg(cfg) if cfg.MODEL.KEYPOINTS_ON else None)


def generate_proposal_labels(rois, roidb, im_info, params, generator=None, gt=None, polys=None,
                             rois_orig=None, rois_valid=None, fixed_slots=False):
    """Training blobs for the RoI heads from the RPN proposals ``rois`` (R, 5) (blob scale).

    roidb: the loader's per-image ground-truth dicts of this blob; im_info: (N, 3); params: a
    ``RoiTargetParams``. ``gt`` may pass an already packed ``GtBatch`` (e.g. the one used for
    the RPN targets; it must hold the keypoints when ``params.keypoints`` is set), ``polys`` the
    roidb's already packed polygons (``pack_polygons``; packed here when None), ``rois_orig``
    (R, 4) precomputed proposals at the original scale (``label_proposals``).
    Returns a dict of Detectron's blob names: rois, labels_int32, bbox_targets,
    bbox_inside_weights, bbox_outside_weights; with masks (``params.mask_resolution``) mask_rois,
    roi_has_mask_int32, masks_int32 (R_m, M, M), mask_labels_int32; with keypoints
    (``params.keypoints``) keypoint_rois, keypoint_locations_int32, keypoint_weights,
    keypoint_loss_normalizer, keypoint_minibatch_valid. All on ``rois.device``.

    ``rois_valid`` (R,) bool flags the proposals of padded ``rois`` (the RPN's ``padded``
    proposals); ``fixed_slots`` (without keypoints) samples into fixed rows, no host
    synchronisation: BATCH_SIZE_PER_IM RoIs per image and round(FG_FRACTION x
    BATCH_SIZE_PER_IM) (at least 1) mask RoIs, flagged by ``roi_valid`` / ``mask_roi_valid``
    (``sample_rois``, ``mask_rcnn_targets``); the losses ignore the padding rows.
    """
    device = rois.device
    if gt is None:
        gt = pack_gt(roidb, device, with_keypoints=params.keypoints is not None)
    N = gt.valid.shape[0]
    if fixed_slots and params.keypoints is not None:
        raise ValueError('generate_proposal_labels: fixed_slots has no keypoint targets')
    labels = label_proposals(rois, gt, im_info, params.fast_rcnn, rois_orig=rois_orig,
                             rois_valid=rois_valid)
    blobs = sample_rois(labels, N, params.fast_rcnn, generator=generator,
                        fixed_slots=fixed_slots)
    if params.mask_resolution is not None:
        if polys is None:
            polys = pack_polygons(roidb, gt.valid.shape[1], device)
        mask_slots = None
        if 'roi_valid' in blobs:
            B = int(params.fast_rcnn.batch_size_per_im)
            mask_slots = (B, min(max(fg_rois_per_image(params.fast_rcnn), 1), B),
                          blobs['fg_count'])
        blobs.update(mask_rcnn_targets(blobs['rois'], blobs['labels_int32'], polys, gt, im_info,
                                       params.mask_resolution, rois_orig=blobs['sampled_boxes'],
                                       fixed_slots=mask_slots))
    if params.keypoints is not None:
        blobs.update(keypoint_rcnn_targets(labels, gt, N, params.keypoints, generator=generator))
    return blobs
