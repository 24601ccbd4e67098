"""RetinaNet's head and losses (Detectron's ``modeling/retinanet_heads.py``; the Focal Loss paper,
https://arxiv.org/abs/1708.02002).

On each FPN level k_min..k_max (``FPN.RPN_MIN_LEVEL`` .. ``FPN.RPN_MAX_LEVEL``, 3..7), with the
same weights on every level:

    P_l (N, D, H, W) -> NUM_CONVS x [3x3 conv D -> D, ReLU] -> 3x3 conv -> cls logits (N, A*K, H, W)
    P_l (N, D, H, W) -> NUM_CONVS x [3x3 conv D -> D, ReLU] -> 3x3 conv -> box deltas (N, A*B, H, W)

A = SCALES_PER_OCTAVE * len(ASPECT_RATIOS) anchors per cell (octave major); K = C - 1 sigmoid
classes, or K = C softmax classes with background 0 (``RETINANET.SOFTMAX``); B = 4, or 4 (C - 1)
with ``RETINANET.CLASS_SPECIFIC_BBOX`` (channel ``a * B + 4 * (class - 1) + coordinate``).
``RETINANET.SHARE_CLS_BBOX_TOWER`` feeds the box predictor from the class tower.

Detectron names the parameters after the finest level and shares them with ``ConvShared``:
``retnet_cls_conv_n<i>_fpn<k_min>``, ``retnet_bbox_conv_n<i>_fpn<k_min>``,
``retnet_cls_pred_fpn<k_min>``, ``retnet_bbox_pred_fpn<k_min>`` (``_w`` / ``_b``); its pkls hold
only those. Init: GaussianFill std 0.01, biases 0, except the classifier's bias, set so that
every anchor starts as background with probability 1 - PRIOR_PROB: -log((1 - pi) / pi) for the
sigmoids; for the softmax, log((C - 1)(1 - pi) / pi) on each anchor's background channel, 0
elsewhere.

Losses (``retinanet_losses``): per level ``fl_fpn<l>`` (the focal loss, ``modeling.focal_loss``)
and ``retnet_loss_bbox_fpn<l>`` (select smooth L1 with ``BBOX_REG_BETA``, times
``BBOX_REG_WEIGHT``), all divided by ``retnet_fg_num``; metrics ``retnet_fg_num``,
``retnet_bg_num``.
"""
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.focal_loss import (select_smooth_l1_loss, sigmoid_focal_loss,
                                             softmax_focal_loss)
from pydetectron.modeling.generate_anchors import retinanet_cell_anchors
from pydetectron.modeling.weight_mapping import blob_mapping
from pydetectron.nn.init import ConstantFill, GaussianFill

__all__ = ["RetinaNetHead", "RetinaNetLossParams", "retinanet_head_from_cfg",
           "retinanet_bias_init", "retinanet_losses"]


class RetinaNetLossParams(namedtuple("RetinaNetLossParams", [
        "targets",           # a targets.retinanet.RetinaNetTargetParams
        "bbox_reg_weight",   # RETINANET.BBOX_REG_WEIGHT
        "bbox_reg_beta",     # RETINANET.BBOX_REG_BETA
        "loss_gamma",        # RETINANET.LOSS_GAMMA
        "loss_alpha",        # RETINANET.LOSS_ALPHA
])):
    """The settings of ``retinanet_losses``."""

    @classmethod
    def from_cfg(cls, cfg=None):
        if cfg is None:
            from pydetectron.core.config import cfg
        from pydetectron.modeling.targets.retinanet import RetinaNetTargetParams
        r = cfg.RETINANET
        return cls(RetinaNetTargetParams.from_cfg(cfg), r.BBOX_REG_WEIGHT, r.BBOX_REG_BETA,
                   r.LOSS_GAMMA, r.LOSS_ALPHA)


def retinanet_bias_init(num_classes, num_anchors, prior_prob, softmax):
    """The classifier's initial bias (Detectron's ``get_retinanet_bias_init``): (A*K,) float32."""
    if softmax:
        per_anchor = np.zeros(num_classes, dtype=np.float32)
        per_anchor[0] = np.log((num_classes - 1) * (1 - prior_prob) / prior_prob)
        return np.tile(per_anchor, num_anchors)
    value = -np.log((1 - prior_prob) / prior_prob)
    return np.full(num_anchors * (num_classes - 1), value, dtype=np.float32)


def _conv3x3(dim_in, dim_out):
    conv = nn.Conv2d(dim_in, dim_out, 3, stride=1, padding=1)
    GaussianFill(conv.weight, 0.01)
    ConstantFill(conv.bias, 0.0)
    return conv


class RetinaNetHead(nn.Module):
    """The class and box towers and predictors, shared over the levels (see the module).

    forward(blobs: list of (N, dim_in, H_l, W_l), finest first) -> (cls_logits, bbox_pred), two
    lists in the same order.
    """

    def __init__(self, dim_in, num_classes, k_min=3, k_max=7, scales_per_octave=3,
                 aspect_ratios=(0.5, 1.0, 2.0), anchor_scale=4, num_convs=4, softmax=False,
                 class_specific_bbox=False, share_cls_bbox_tower=False, prior_prob=0.01):
        super().__init__()
        self.k_min, self.k_max = k_min, k_max
        self.num_classes = num_classes
        self.softmax = softmax
        self.class_specific_bbox = class_specific_bbox
        self.share_cls_bbox_tower = share_cls_bbox_tower
        for lvl in range(k_min, k_max + 1):
            cell = retinanet_cell_anchors(lvl, scales_per_octave, aspect_ratios, anchor_scale)
            self.register_buffer("anchors_fpn%d" % lvl,
                                 torch.as_tensor(cell, dtype=torch.float32), persistent=False)
        self.num_anchors = A = scales_per_octave * len(aspect_ratios)
        self.cls_convs = nn.ModuleList([_conv3x3(dim_in, dim_in) for _ in range(num_convs)])
        self.bbox_convs = nn.ModuleList(
            [] if share_cls_bbox_tower else [_conv3x3(dim_in, dim_in) for _ in range(num_convs)])
        cls_dim = num_classes if softmax else num_classes - 1
        self.cls_pred = _conv3x3(dim_in, cls_dim * A)
        with torch.no_grad():
            self.cls_pred.bias.copy_(torch.from_numpy(
                retinanet_bias_init(num_classes, A, prior_prob, softmax)))
        self.bbox_dim = 4 * (num_classes - 1) if class_specific_bbox else 4
        self.bbox_pred = _conv3x3(dim_in, self.bbox_dim * A)

    def cell_anchors(self):
        """[(A, 4) anchors of one cell, stride] per level, finest first."""
        return [(getattr(self, "anchors_fpn%d" % lvl), 2. ** lvl)
                for lvl in range(self.k_min, self.k_max + 1)]

    @staticmethod
    def _tower(convs, x):
        for conv in convs:
            x = F.relu(conv(x))
        return x

    def forward(self, blobs):
        if len(blobs) != self.k_max - self.k_min + 1:
            raise ValueError("RetinaNetHead: %d feature levels for levels %d..%d"
                             % (len(blobs), self.k_min, self.k_max))
        cls_logits, bbox_pred = [], []
        for x in blobs:
            cls_feat = self._tower(self.cls_convs, x)
            cls_logits.append(self.cls_pred(cls_feat))
            box_feat = cls_feat if self.share_cls_bbox_tower else self._tower(self.bbox_convs, x)
            bbox_pred.append(self.bbox_pred(box_feat))
        return cls_logits, bbox_pred

    def probabilities(self, cls_logits):
        """Per level (N, A*K, H, W) class probabilities: sigmoids, or a softmax over each
        anchor's K channels (Detectron's ``GroupSpatialSoftmax``)."""
        if not self.softmax:
            return [torch.sigmoid(x) for x in cls_logits]
        out = []
        for x in cls_logits:
            N, D, H, W = x.shape
            out.append(F.softmax(x.view(N, self.num_anchors, D // self.num_anchors, H, W),
                                 dim=2).view(N, D, H, W))
        return out

    def detectron_weight_mapping(self):
        k = self.k_min
        names = {"cls_convs.%d" % i: "retnet_cls_conv_n%d_fpn%d" % (i, k)
                 for i in range(len(self.cls_convs))}
        names.update({"bbox_convs.%d" % i: "retnet_bbox_conv_n%d_fpn%d" % (i, k)
                      for i in range(len(self.bbox_convs))})
        names["cls_pred"] = "retnet_cls_pred_fpn%d" % k
        names["bbox_pred"] = "retnet_bbox_pred_fpn%d" % k
        return blob_mapping(self, names), []


def retinanet_head_from_cfg(dim_in):
    """``RetinaNetHead`` with the global ``cfg``'s RETINANET.* / FPN.RPN_*_LEVEL settings."""
    from pydetectron.core.config import cfg
    r = cfg.RETINANET
    return RetinaNetHead(
        dim_in, cfg.MODEL.NUM_CLASSES, cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL,
        r.SCALES_PER_OCTAVE, tuple(r.ASPECT_RATIOS), r.ANCHOR_SCALE, r.NUM_CONVS, r.SOFTMAX,
        r.CLASS_SPECIFIC_BBOX, r.SHARE_CLS_BBOX_TOWER, r.PRIOR_PROB)


def retinanet_losses(head, cls_logits, bbox_pred, roidb, params):
    """Detectron's RetinaNet losses for one batch: ``{'losses': {...}, 'metrics': {...}}``.

    ``head``: the ``RetinaNetHead`` that produced the per-level ``cls_logits`` / ``bbox_pred``;
    ``roidb``: the loader's per-image ground truth (blob scale); ``params``: a
    ``RetinaNetLossParams``. Targets are computed on the outputs' device (``targets.retinanet``).
    """
    from pydetectron.modeling.targets.retinanet import retinanet_targets
    cells = head.cell_anchors()
    t = retinanet_targets([c for c, _ in cells], [s for _, s in cells],
                          [tuple(x.shape[-2:]) for x in cls_logits], roidb, head.num_classes,
                          params.targets)
    fg_num = t['fg_num']
    losses = {}
    A = head.num_anchors
    for i, lvl in enumerate(range(head.k_min, head.k_max + 1)):
        labels, targets = t['labels'][i], t['bbox_targets'][i]
        N, _, H, W = labels.shape
        pred = bbox_pred[i].float()
        if head.class_specific_bbox:
            # the deltas of each anchor's own class: channel a * B + 4 * (label - 1) + j
            pred = pred.view(N, A, head.num_classes - 1, 4, H, W)
            cls = (labels - 1).clamp(min=0).view(N, A, 1, 1, H, W).expand(N, A, 1, 4, H, W)
            pred = pred.gather(2, cls).squeeze(2)
        else:
            pred = pred.view(N, A, 4, H, W)
        losses['retnet_loss_bbox_fpn%d' % lvl] = params.bbox_reg_weight * select_smooth_l1_loss(
            pred, targets, labels > 0, fg_num, params.bbox_reg_beta)
    for i, lvl in enumerate(range(head.k_min, head.k_max + 1)):
        focal = softmax_focal_loss if head.softmax else sigmoid_focal_loss
        losses['fl_fpn%d' % lvl] = focal(cls_logits[i].float(), t['labels'][i], fg_num,
                                         params.loss_gamma, params.loss_alpha)
    return {'losses': losses, 'metrics': {'retnet_fg_num': fg_num, 'retnet_bg_num': t['bg_num']}}
