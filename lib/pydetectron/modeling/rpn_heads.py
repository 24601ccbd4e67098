"""RPN heads, single-scale and FPN, and their proposals (Detectron's ``rpn_heads.py`` and the RPN
half of ``FPN.py``).

Shapes: N images, A anchors per cell, (H, W) a feature map.

- Single scale: ``conv_rpn`` 3x3 + ReLU, then ``rpn_cls_logits`` 1x1 (N, A, H, W) and
  ``rpn_bbox_pred`` 1x1 (N, 4A, H, W); anchors ``RPN.SIZES`` x ``RPN.ASPECT_RATIOS`` at stride
  1 / spatial_scale.
- FPN: the same three convs, created for level ``RPN_MIN_LEVEL`` (``conv_rpn_fpn2`` ...) and shared
  by every level; level k has anchors of size RPN_ANCHOR_START_SIZE * 2^(k - k_min) at stride 2^k.
- ``RPN.CLS_ACTIVATION``: 'sigmoid' (Detectron: one logit per anchor) or 'softmax'
  (Detectron.pytorch: 2A channels laid out (2, A), background first; the object probability is the
  softmax over the pair).
- Gaussian(0.01) weights, zero biases.

``generic_rpn_outputs`` runs the head and, when proposals are needed (inference, or Faster R-CNN
training), turns it into proposals: per image and level with TEST.* (or TRAIN.*) settings, then for
FPN the collect step (top TEST.RPN_POST_NMS_TOP_N per image at test, top
TRAIN.RPN_POST_NMS_TOP_N x FPN.RPN_COLLECT_SCALE per minibatch in training, as Detectron does).
"""
import torch
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.generate_anchors import generate_anchors
from pydetectron.modeling.generate_proposals import (
    FieldAnchors, ProposalParams, generate_multilevel_proposals, shifted_anchors)
from pydetectron.modeling.weight_mapping import blob_mapping
from pydetectron.nn.init import init_layer
from pydetectron.utils.boxes import BBOX_XFORM_CLIP

__all__ = ["RPNOutputs", "single_scale_rpn_outputs", "fpn_rpn_outputs", "generic_rpn_outputs"]


class RPNOutputs(nn.Module):
    """The RPN convs (one set; FPN shares it across levels): x (N, C, H, W) ->
    logits (N, A or 2A, H, W), deltas (N, 4A, H, W), object probabilities (N, A, H, W)."""

    def __init__(self, dim_in, num_anchors, dim_out=None, cls_activation="sigmoid", suffix=""):
        super().__init__()
        if cls_activation not in ("sigmoid", "softmax"):
            raise ValueError("RPN.CLS_ACTIVATION must be 'sigmoid' or 'softmax', got %r"
                             % (cls_activation,))
        dim_out = dim_in if dim_out is None else dim_out
        self.num_anchors = num_anchors
        self.cls_activation = cls_activation
        self.suffix = suffix  # '' single scale, 'fpn2' for FPN (the level that owns the weights)
        cls_channels = num_anchors * (2 if cls_activation == "softmax" else 1)
        self.conv_rpn = init_layer(nn.Conv2d(dim_in, dim_out, 3, padding=1), "GaussianFill", 0.01)
        self.rpn_cls_logits = init_layer(nn.Conv2d(dim_out, cls_channels, 1), "GaussianFill", 0.01)
        self.rpn_bbox_pred = init_layer(nn.Conv2d(dim_out, 4 * num_anchors, 1), "GaussianFill", 0.01)

    def forward(self, x):
        h = F.relu(self.conv_rpn(x), inplace=True)
        logits = self.rpn_cls_logits(h)
        deltas = self.rpn_bbox_pred(h)
        return logits, deltas, self.cls_probs(logits)

    def cls_probs(self, logits):
        if self.cls_activation == "sigmoid":
            return torch.sigmoid(logits)
        n, c, h, w = logits.shape
        # (N, 2A, H, W) -> (N, 2, A, H, W): softmax over (background, object), keep the object
        return F.softmax(logits.view(n, 2, c // 2, h, w), dim=1)[:, 1]

    def detectron_weight_mapping(self):
        if self.suffix:  # conv_rpn_fpn2, rpn_cls_logits_fpn2, rpn_bbox_pred_fpn2
            names = {"conv_rpn": "conv_rpn_" + self.suffix,
                     "rpn_cls_logits": "rpn_cls_logits_" + self.suffix,
                     "rpn_bbox_pred": "rpn_bbox_pred_" + self.suffix}
        else:
            names = {"conv_rpn": "conv_rpn", "rpn_cls_logits": "rpn_cls_logits",
                     "rpn_bbox_pred": "rpn_bbox_pred"}
        return blob_mapping(self, names), []


def _store_proposals(out, got):
    out["rpn_rois"], out["rpn_roi_probs"] = got[0], got[1]
    if len(got) == 3:
        out["rpn_rois_valid"] = got[2]


class _ProposalsMixin:
    def _proposal_params(self):
        return self.train_params if self.training else self.test_params

    def _cell_anchors(self):
        """[(anchors (A, 4) of one cell, stride)] per output map, finest first."""
        if hasattr(self, "k_min"):
            return [(getattr(self, "anchors_fpn%d" % lvl), 2. ** lvl)
                    for lvl in range(self.k_min, self.k_max + 1)]
        return [(self.anchors, self.feat_stride)]

    def field_anchor_set(self, maps):
        """The ``generate_proposals.FieldAnchors`` of the output maps ``maps`` (the head's outputs
        or the features, one (N, C, H, W) tensor per map): every anchor of each map, ordered
        (H, W, A) like the head's channels, and their centres and sizes once computed.

        Kept per (map sizes, device), at most 32 sets (each as large as all its anchors): images
        of one size reuse them (training on a dataset sees a few dozen sizes), and building them
        is a dozen small kernels per map.
        """
        cells = self._cell_anchors()
        key = (tuple(tuple(x.shape[-2:]) for x in maps), str(cells[0][0].device))
        cache = self.__dict__.setdefault("_field_anchor_cache", {})
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= 32:
                cache.clear()
            hit = cache[key] = FieldAnchors(
                [shifted_anchors(cell, x.shape[-2], x.shape[-1], stride)
                 for x, (cell, stride) in zip(maps, cells)])
        return hit

    def field_anchors(self, maps):
        """[(H * W * A, 4)] every anchor of each output map in ``maps`` (``field_anchor_set``)."""
        return self.field_anchor_set(maps).per_map


class single_scale_rpn_outputs(_ProposalsMixin, nn.Module):
    """RPN on one feature map (C4 models). forward(blob_conv, im_info, need_proposals) -> dict."""

    def __init__(self, dim_in, spatial_scale, anchor_sizes=(64, 128, 256, 512),
                 aspect_ratios=(0.5, 1, 2), dim_out=None, cls_activation="sigmoid",
                 train_params=None, test_params=None, bbox_xform_clip=BBOX_XFORM_CLIP):
        super().__init__()
        self.feat_stride = 1. / spatial_scale
        anchors = generate_anchors(self.feat_stride, anchor_sizes, aspect_ratios)
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32),
                             persistent=False)
        self.rpn = RPNOutputs(dim_in, anchors.shape[0], dim_out, cls_activation)
        self.train_params = train_params or ProposalParams(12000, 2000, 0.7, 0)
        self.test_params = test_params or ProposalParams(6000, 300, 0.7, 0)
        self.bbox_xform_clip = bbox_xform_clip

    def forward(self, blob_conv, im_info, need_proposals=True):
        logits, deltas, probs = self.rpn(blob_conv)
        out = {"rpn_cls_logits": logits, "rpn_bbox_pred": deltas, "rpn_cls_probs": probs}
        if need_proposals:
            self.add_proposals(out, im_info)
        return out

    def add_proposals(self, out, im_info, padded=False):
        """Add ``rpn_rois`` / ``rpn_roi_probs`` to ``out`` (this head's forward output); with
        ``padded`` also ``rpn_rois_valid`` (``generate_multilevel_proposals``' padded rows)."""
        probs, deltas = out["rpn_cls_probs"], out["rpn_bbox_pred"]
        got = generate_multilevel_proposals(
            [probs], [deltas], im_info, [self.anchors], [self.feat_stride],
            self._proposal_params(), bbox_xform_clip=self.bbox_xform_clip,
            field_anchors=self.field_anchor_set([probs]), padded=padded)
        _store_proposals(out, got)
        return out

    def detectron_weight_mapping(self):
        mapping, orphans = self.rpn.detectron_weight_mapping()
        return {"rpn." + k: v for k, v in mapping.items()}, orphans


class fpn_rpn_outputs(_ProposalsMixin, nn.Module):
    """RPN on the FPN levels k_min..k_max (weights shared). blob_conv: list, finest first.

    forward -> dict with per-level lists ``rpn_cls_logits`` / ``rpn_bbox_pred`` / ``rpn_cls_probs``
    (finest first) and, with proposals, the collected ``rpn_rois`` / ``rpn_roi_probs``.
    """

    def __init__(self, dim_in, spatial_scales, k_min=2, k_max=6, anchor_start_size=32,
                 aspect_ratios=(0.5, 1, 2), dim_out=None, cls_activation="sigmoid",
                 train_params=None, test_params=None, collect_scale=1.0,
                 bbox_xform_clip=BBOX_XFORM_CLIP):
        super().__init__()
        if len(spatial_scales) != k_max - k_min + 1:
            raise ValueError("fpn_rpn_outputs: %d feature levels for RPN levels %d..%d"
                             % (len(spatial_scales), k_min, k_max))
        self.k_min, self.k_max = k_min, k_max
        self.spatial_scales = list(spatial_scales)
        for lvl in range(k_min, k_max + 1):
            anchors = generate_anchors(2. ** lvl, (anchor_start_size * 2. ** (lvl - k_min),),
                                       aspect_ratios)
            self.register_buffer("anchors_fpn%d" % lvl, torch.as_tensor(anchors, dtype=torch.float32),
                                 persistent=False)
        self.rpn = RPNOutputs(dim_in, len(aspect_ratios), dim_out, cls_activation,
                              suffix="fpn%d" % k_min)
        self.train_params = train_params or ProposalParams(2000, 2000, 0.7, 0)
        self.test_params = test_params or ProposalParams(1000, 1000, 0.7, 0)
        self.collect_scale = collect_scale  # FPN.RPN_COLLECT_SCALE (set by the training tool)
        self.bbox_xform_clip = bbox_xform_clip

    def forward(self, blob_conv, im_info, need_proposals=True):
        if len(blob_conv) != self.k_max - self.k_min + 1:
            raise ValueError("fpn_rpn_outputs: got %d feature maps for RPN levels %d..%d"
                             % (len(blob_conv), self.k_min, self.k_max))
        out = {"rpn_cls_logits": [], "rpn_bbox_pred": [], "rpn_cls_probs": []}
        for x in blob_conv:
            logits, deltas, probs = self.rpn(x)
            out["rpn_cls_logits"].append(logits)
            out["rpn_bbox_pred"].append(deltas)
            out["rpn_cls_probs"].append(probs)
        if need_proposals:
            self.add_proposals(out, im_info)
        return out

    def add_proposals(self, out, im_info, padded=False):
        """Add the collected ``rpn_rois`` / ``rpn_roi_probs`` to ``out`` (this head's forward
        output); with ``padded`` (training only) also ``rpn_rois_valid``, and no host
        synchronisation (``generate_multilevel_proposals``' padded rows). Kept apart from
        ``forward`` so that training can queue the RPN targets and losses on the device first."""
        params = self._proposal_params()
        levels = range(self.k_min, self.k_max + 1)
        # Detectron: top N per image at test; top N of the whole minibatch in training.
        top_n = (int(params.post_nms_top_n * self.collect_scale + 0.5) if self.training
                 else params.post_nms_top_n)
        got = generate_multilevel_proposals(
            out["rpn_cls_probs"], out["rpn_bbox_pred"], im_info,
            [getattr(self, "anchors_fpn%d" % lvl) for lvl in levels],
            [2. ** lvl for lvl in levels], params, collect_top_n=top_n,
            per_image=not self.training, bbox_xform_clip=self.bbox_xform_clip,
            field_anchors=self.field_anchor_set(out["rpn_cls_probs"]), padded=padded)
        _store_proposals(out, got)
        return out

    def detectron_weight_mapping(self):
        mapping, orphans = self.rpn.detectron_weight_mapping()
        return {"rpn." + k: v for k, v in mapping.items()}, orphans


def generic_rpn_outputs(dim_in, spatial_scale):
    """The RPN of the global cfg for a body with this output: the FPN RPN on a pyramid (a list of
    spatial scales; Detectron's FPN.FPN_ON path), the single-scale RPN on one feature map."""
    from pydetectron.core.config import cfg
    dim_out = None if cfg.RPN.OUT_DIM_AS_IN_DIM else cfg.RPN.OUT_DIM
    common = dict(dim_out=dim_out, cls_activation=cfg.RPN.CLS_ACTIVATION,
                  train_params=ProposalParams.from_cfg("TRAIN"),
                  test_params=ProposalParams.from_cfg("TEST"), bbox_xform_clip=cfg.BBOX_XFORM_CLIP)
    if isinstance(spatial_scale, (list, tuple)):
        k_min, k_max = cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL
        return fpn_rpn_outputs(dim_in, spatial_scale[:k_max - k_min + 1], k_min, k_max,
                               cfg.FPN.RPN_ANCHOR_START_SIZE, cfg.FPN.RPN_ASPECT_RATIOS,
                               collect_scale=cfg.FPN.RPN_COLLECT_SCALE, **common)
    return single_scale_rpn_outputs(dim_in, spatial_scale, cfg.RPN.SIZES, cfg.RPN.ASPECT_RATIOS,
                                    **common)
