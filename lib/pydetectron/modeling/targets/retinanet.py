"""RetinaNet training targets (Detectron's ``roi_data/retinanet.py``), for every image of the
batch at once on the anchors' device.

Shapes: N images, G ground-truth boxes (padded, see ``targets.gt``); per level l (finest first) a
head output of H_l x W_l cells with A anchors each (octave major, aspect ratio minor, see
``generate_anchors.retinanet_cell_anchors``); F_l the side of the level's square *field*.

Detectron's rules, per image:
  * the anchors are a square field of F_l x F_l cells per level, F_l = ceil(S / stride) with
    S = ``TRAIN.MAX_SIZE`` rounded up to ``FPN.COARSEST_STRIDE`` -- the same field for every
    image, whatever its size; no anchor is dropped for straddling the image (RetinaNet has no
    straddle threshold);
  * the ground truth is the non-crowd boxes with ``gt_classes > 0``; crowd boxes play no part;
  * label -1 (ignored) to start; for each gt box, every anchor of the field whose IoU equals that
    box's best IoU (ties included, even a best IoU of 0) takes the class of *its own* best gt box;
    every anchor with max IoU >= ``RETINANET.POSITIVE_OVERLAP`` takes the class of its best gt box;
  * the foreground count is taken **now**; then every anchor with max IoU <
    ``RETINANET.NEGATIVE_OVERLAP`` becomes background (0) -- including a low-quality match whose
    IoU is that low, which therefore counts in the foreground number but is trained as
    background;
  * ``retnet_fg_num`` = sum over images of (#fg + 1); ``retnet_bg_num`` = sum of
    (#bg + 1) * (C - 1) + (#fg + 1) * (C - 2), C = ``MODEL.NUM_CLASSES`` (a metric only);
  * regression targets ``bbox_transform_inv(anchor, best gt, (1, 1, 1, 1))`` on the anchors
    still labelled > 0;
  * the labels are then cut to the head's H_l x W_l cells (Detectron's ``[0:h, 0:w]``).

One difference, on purpose: a foreground anchor of the field outside the head's cells (possible
only near the padded border) still counts in ``retnet_fg_num`` as in Detectron, but gets no
box-regression term; Detectron's ``SelectSmoothL1Loss`` indexes the prediction at that cell
anyway, i.e. reads another cell's (or channel's) value.
"""
import math
from collections import namedtuple

import torch

from pydetectron.modeling.generate_proposals import shifted_anchors
from pydetectron.modeling.targets.gt import GtBatch, pack_gt
from pydetectron.modeling.targets.overlaps import box_iou
from pydetectron.utils.boxes import bbox_transform_inv

__all__ = ["RetinaNetTargetParams", "field_size", "retinanet_targets"]


class RetinaNetTargetParams(namedtuple("RetinaNetTargetParams", [
        "positive_overlap",   # RETINANET.POSITIVE_OVERLAP
        "negative_overlap",   # RETINANET.NEGATIVE_OVERLAP
        "train_max_size",     # TRAIN.MAX_SIZE (the field of anchors covers it)
        "coarsest_stride",    # FPN.COARSEST_STRIDE
])):
    """The settings of ``retinanet_targets``."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        return cls(cfg.RETINANET.POSITIVE_OVERLAP, cfg.RETINANET.NEGATIVE_OVERLAP,
                   cfg.TRAIN.MAX_SIZE, cfg.FPN.COARSEST_STRIDE)


def field_size(stride, train_max_size, coarsest_stride):
    """Side F of a level's square field of anchors (Detectron's ``get_field_of_anchors``)."""
    fpn_max_size = coarsest_stride * math.ceil(train_max_size / float(coarsest_stride))
    return int(math.ceil(fpn_max_size / float(stride)))


def retinanet_targets(cell_anchors, strides, feature_sizes, gt, num_classes, params,
                      field_sizes=None):
    """Detectron's RetinaNet blobs for a batch.

    cell_anchors: per level an (A, 4) float32 tensor (one cell's anchors) on the model's device;
    strides: per level the stride (2^level); feature_sizes: per level (H_l, W_l) of the head's
    outputs; gt: a ``GtBatch`` or the loader's per-image ground-truth dicts (blob scale);
    num_classes: C = MODEL.NUM_CLASSES (background counted); params: a ``RetinaNetTargetParams``.
    ``field_sizes`` default to ``field_size(stride, ...)`` (at least the feature size).

    Returns a dict: ``labels`` per level (N, A, H, W) int64 in {-1, 0, 1..C-1} (the layout of
    Detectron's ``retnet_cls_labels_fpn<l>``); ``bbox_targets`` per level (N, A, 4, H, W) float32
    (meaningful where the label is > 0); ``fg_num`` and ``bg_num`` 0-dim float32 tensors.
    """
    pos_th, neg_th = params.positive_overlap, params.negative_overlap
    if not (len(cell_anchors) == len(strides) == len(feature_sizes)):
        raise ValueError('retinanet_targets: %d cell_anchors, %d strides, %d feature_sizes'
                         % (len(cell_anchors), len(strides), len(feature_sizes)))
    device = cell_anchors[0].device
    if not isinstance(gt, GtBatch):
        gt = pack_gt(gt, device)
    if field_sizes is None:
        field_sizes = [max(field_size(s, params.train_max_size, params.coarsest_stride),
                           int(h), int(w))
                       for s, (h, w) in zip(strides, feature_sizes)]

    # Every anchor of every level's field, level by level, each in (F, F, A) order: (T, 4)
    fields = [shifted_anchors(a.float(), f, f, s) for a, f, s in zip(cell_anchors, field_sizes,
                                                                     strides)]
    all_anchors = torch.cat(fields, dim=0)
    N = gt.boxes.shape[0]

    gt_ok = gt.valid & ~gt.is_crowd                                          # (N, G)
    iou = box_iou(all_anchors.unsqueeze(0), gt.boxes)                        # (N, T, G)
    iou.masked_fill_(~gt_ok.unsqueeze(1), -1.)     # padding / crowd columns never match
    anchor_max, anchor_argmax = iou.max(dim=2)                               # (N, T)
    gt_max = iou.amax(dim=1)                                                 # (N, G)
    is_gt_best = ((iou == gt_max.unsqueeze(1)) & gt_ok.unsqueeze(1)).any(dim=2)
    del iou
    best_class = gt.classes.gather(1, anchor_argmax)                         # (N, T)

    labels = torch.full_like(best_class, -1)
    labels = torch.where(is_gt_best | (anchor_max >= pos_th), best_class, labels)
    num_fg = (labels >= 1).sum(dim=1)                                        # (N,)
    is_bg = anchor_max < neg_th
    labels = labels.masked_fill(is_bg, 0)
    num_bg = is_bg.sum(dim=1)
    fg_num = (num_fg + 1).sum().to(torch.float32)
    bg_num = ((num_bg + 1) * (num_classes - 1) + (num_fg + 1) * (num_classes - 2)).sum() \
        .to(torch.float32)

    best_box = gt.boxes.gather(1, anchor_argmax.unsqueeze(2).expand(N, -1, 4))  # (N, T, 4)
    out_labels, out_targets, start = [], [], 0
    for anchors, f, (H, W) in zip(fields, field_sizes, feature_sizes):
        A = anchors.shape[0] // (f * f)
        end = start + anchors.shape[0]
        # the head's cells of the field: rows < H, columns < W
        lab = labels[:, start:end].view(N, f, f, A)[:, :H, :W]               # (N, H, W, A)
        box = best_box[:, start:end].view(N, f, f, A, 4)[:, :H, :W]
        anc = anchors.view(f, f, A, 4)[:H, :W].expand(N, H, W, A, 4)
        tgt = bbox_transform_inv(anc.reshape(-1, 4), box.reshape(-1, 4)).view(N, H, W, A, 4)
        out_labels.append(lab.permute(0, 3, 1, 2).contiguous())
        out_targets.append(tgt.permute(0, 3, 4, 1, 2).contiguous())
        start = end
    return {'labels': out_labels, 'bbox_targets': out_targets, 'fg_num': fg_num,
            'bg_num': bg_num}
