"""Generalized_RCNN: Faster / Mask / Keypoint R-CNN, C4 and FPN, RPN-only and Fast R-CNN, from ``cfg``.

    data (N, 3, H, W) -> Conv_Body -> [RPN -> proposals] -> Box_Head -> Box_Outs
                                              rois ------> Mask_Head -> Mask_Outs      (mask_net)
                                              rois ------> Keypoint_Head -> Keypoint_Outs (keypoint_net)

The parts are looked up by the config's function names (``MODEL.CONV_BODY``,
``FAST_RCNN.ROI_BOX_HEAD``, ``MRCNN.ROI_MASK_HEAD``, ``KRCNN.ROI_KEYPOINTS_HEAD``; see
``modeling.registry``). Build it after ``merge_cfg_from_file`` + ``assert_and_infer_cfg``.

Inference (``model.eval()``, under ``torch.no_grad()``): ``model(data, im_info)`` returns
    'blob_conv'  the body's output the RoI heads use: a tensor (C4) or the list of FPN levels
                 ROI_MIN_LEVEL..ROI_MAX_LEVEL, finest first;
    'rois'       (R, 5) = (image index, x1, y1, x2, y2) in blob scale, image by image
                 (each image's TEST.RPN_POST_NMS_TOP_N best proposals);
    'cls_score'  (R, NUM_CLASSES) softmax probabilities;
    'cls_logits' (R, NUM_CLASSES) the raw class logits the probabilities come from;
    'bbox_pred'  (R, 4 x NUM_CLASSES) raw deltas ((R, 8) with MODEL.CLS_AGNOSTIC_BBOX_REG);
or, for MODEL.RPN_ONLY, 'rois' and 'rpn_roi_probs' (R,); for RetinaNet (RETINANET.RETINANET_ON)
per-level lists 'retnet_cls_prob' / 'retnet_bbox_pred' (``retinanet_heads``), whose training
losses are ``fl_fpn<l>`` / ``retnet_loss_bbox_fpn<l>``. Without an RPN (MODEL.FASTER_RCNN False:
Fast R-CNN on precomputed proposals) pass the proposals as ``rois`` (R, 5). A model with an RPN
given ``rois`` runs its heads on those boxes instead of its proposals (no 'rpn_roi_probs' then;
an RPN-only model has no heads and refuses them); in training they replace the RPN's proposals
as the RoIs the heads sample from (the RPN still gets its losses).
``mask_net(blob_conv, rois)`` -> (R, C, M, M) mask probabilities, ``mask_logits`` the logits they
come from; ``keypoint_net(blob_conv, rois)`` -> (R, K, Hk, Wk) heatmap logits;
``conv_body_only(data)`` -> 'blob_conv' alone;
``detect(data, im_info)`` runs the whole test path on the device. ``test_front`` (body, RPN, padded
proposals, box head: fixed shapes, no host synchronisation; one CUDA graph in test_net with
``--front_graphs``) and ``front_outputs`` (the padding rows dropped) give the same outputs for one
image (``padded_test_front = True`` makes ``forward`` take that path).

Training (``model.train()``): the body and the RPN run here (proposals with TRAIN.* settings,
collected per minibatch for FPN); ``training_losses`` adds the targets and losses (``modeling.losses``):
``{'losses': {...}, 'metrics': {...}}``, plus ``'minibatch_valid'`` (a () float tensor, 0 or 1) for a
keypoint model on precomputed proposals, where Detectron drops minibatches with too few visible
keypoints (``KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH``; the trainer draws the next one).
"""
import logging

import torch
from torch import nn

from pydetectron.modeling import postprocess
from pydetectron.modeling.fast_rcnn_heads import fast_rcnn_outputs
from pydetectron.modeling.keypoint_rcnn_heads import keypoint_outputs_from_cfg
from pydetectron.modeling.losses import GeneralizedRcnnLossParams
from pydetectron.modeling.mask_rcnn_heads import mask_rcnn_outputs
from pydetectron.modeling.registry import CONV_BODY, ROI_BOX_HEAD, ROI_KEYPOINTS_HEAD, ROI_MASK_HEAD
from pydetectron.modeling.rpn_heads import generic_rpn_outputs
from pydetectron.modeling.weight_mapping import merge_mappings

logger = logging.getLogger(__name__)

__all__ = ["Generalized_RCNN"]


class Generalized_RCNN(nn.Module):
    """The detector described by the global ``cfg`` (see the module docstring for the contract)."""

    def __init__(self):
        super().__init__()
        from pydetectron.core.config import cfg
        m = cfg.MODEL
        if not m.CONV_BODY:
            raise ValueError("MODEL.CONV_BODY is empty: merge a config (e.g. "
                             "configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml) before building")
        if m.NUM_CLASSES < 2 and not m.RPN_ONLY:
            raise ValueError("MODEL.NUM_CLASSES is %d; set it (81 for COCO, counting the "
                             "background) before building the model" % m.NUM_CLASSES)
        self.rpn_only = m.RPN_ONLY
        self.faster_rcnn = m.FASTER_RCNN
        self.mask_on = m.MASK_ON
        self.keypoints_on = m.KEYPOINTS_ON
        self.num_classes = m.NUM_CLASSES
        self.cls_agnostic_bbox_reg = m.CLS_AGNOSTIC_BBOX_REG

        self.Conv_Body = CONV_BODY.get(m.CONV_BODY)()
        if cfg.TRAIN.FREEZE_CONV_BODY:
            # Detectron stops the gradient at the body's output blobs: nothing below them (FPN
            # included) trains
            for p in self.Conv_Body.parameters():
                p.requires_grad_(False)
        dim, scale = self.Conv_Body.dim_out, self.Conv_Body.spatial_scale
        self.multilevel = isinstance(scale, (list, tuple))
        self.RetinaNet = None
        if cfg.RETINANET.RETINANET_ON:
            self._init_retinanet(dim, scale)
            return
        self.num_rpn_levels = self.num_roi_levels = None
        if self.multilevel:
            # Detectron's _narrow_to_fpn_roi_levels: RPN and RoI pyramids start at the same level;
            # the RoI heads use the finest ROI_MAX - ROI_MIN + 1 levels.
            if cfg.FPN.RPN_MIN_LEVEL != cfg.FPN.ROI_MIN_LEVEL:
                raise ValueError("FPN.RPN_MIN_LEVEL (%d) must equal FPN.ROI_MIN_LEVEL (%d)"
                                 % (cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.ROI_MIN_LEVEL))
            if cfg.FPN.RPN_MAX_LEVEL < cfg.FPN.ROI_MAX_LEVEL:
                raise ValueError("FPN.RPN_MAX_LEVEL (%d) must be >= FPN.ROI_MAX_LEVEL (%d)"
                                 % (cfg.FPN.RPN_MAX_LEVEL, cfg.FPN.ROI_MAX_LEVEL))
            self.num_roi_levels = cfg.FPN.ROI_MAX_LEVEL - cfg.FPN.ROI_MIN_LEVEL + 1
            self.num_rpn_levels = cfg.FPN.RPN_MAX_LEVEL - cfg.FPN.RPN_MIN_LEVEL + 1
            roi_scale = list(scale[:self.num_roi_levels])
        else:
            roi_scale = scale

        self.RPN = None
        if cfg.RPN.RPN_ON or m.FASTER_RCNN or m.RPN_ONLY:
            if not self.multilevel and abs(cfg.RPN.STRIDE * scale - 1.0) > 1e-6:
                # Detectron places the single-level anchors RPN.STRIDE apart; here they follow
                # the body's feature map, so the two must agree
                raise ValueError("RPN.STRIDE is %s but %s outputs features at stride %s"
                                 % (cfg.RPN.STRIDE, m.CONV_BODY, 1.0 / scale))
            self.RPN = generic_rpn_outputs(dim, scale)

        self.Box_Head = self.Box_Outs = None
        if not m.RPN_ONLY:
            self.Box_Head = ROI_BOX_HEAD.get(cfg.FAST_RCNN.ROI_BOX_HEAD)(dim, roi_scale)
            self.Box_Outs = fast_rcnn_outputs(self.Box_Head.dim_out, m.NUM_CLASSES,
                                              m.CLS_AGNOSTIC_BBOX_REG)

        self.Mask_Head = self.Mask_Outs = None
        self.mask_resolution = cfg.MRCNN.RESOLUTION
        if m.MASK_ON:
            self.Mask_Head = ROI_MASK_HEAD.get(cfg.MRCNN.ROI_MASK_HEAD)(dim, roi_scale)
            if hasattr(self.Mask_Head, "share_res5_module"):
                if not hasattr(self.Box_Head, "res5"):
                    raise ValueError("%s shares res5 with the box head, which must be "
                                     "ResNet.ResNet_roi_conv5_head (got %r)"
                                     % (cfg.MRCNN.ROI_MASK_HEAD, cfg.FAST_RCNN.ROI_BOX_HEAD))
                self.Mask_Head.share_res5_module(self.Box_Head.res5)
            self.Mask_Outs = mask_rcnn_outputs(
                self.Mask_Head.dim_out, m.NUM_CLASSES, cfg.MRCNN.CLS_SPECIFIC_MASK,
                cfg.MRCNN.RESOLUTION, cfg.MRCNN.UPSAMPLE_RATIO, cfg.MRCNN.USE_FC_OUTPUT,
                cfg.MRCNN.CONV_INIT)

        self.Keypoint_Head = self.Keypoint_Outs = None
        self.num_keypoints = cfg.KRCNN.NUM_KEYPOINTS
        self.heatmap_size = cfg.KRCNN.HEATMAP_SIZE
        if m.KEYPOINTS_ON:
            self.Keypoint_Head = ROI_KEYPOINTS_HEAD.get(cfg.KRCNN.ROI_KEYPOINTS_HEAD)(dim, roi_scale)
            self.Keypoint_Outs = keypoint_outputs_from_cfg(self.Keypoint_Head.dim_out)

        self.postprocess_params = postprocess.PostprocessParams.from_cfg()
        self.loss_params = GeneralizedRcnnLossParams.from_cfg()

    def _init_retinanet(self, dim, scale):
        """RetinaNet (``RETINANET.RETINANET_ON``): the body's levels FPN.RPN_MIN_LEVEL ..
        RPN_MAX_LEVEL feed ``retinanet_heads.RetinaNetHead``; no RPN and no RoI heads."""
        from pydetectron.core.config import cfg
        from pydetectron.modeling.retinanet_heads import (RetinaNetLossParams,
                                                          retinanet_head_from_cfg)
        k_min, k_max = cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL
        body_min = getattr(self.Conv_Body, "min_level", None)
        if not self.multilevel or body_min is None or k_min < body_min \
                or k_max > self.Conv_Body.max_level:
            raise ValueError("RETINANET.RETINANET_ON needs an FPN body (MODEL.CONV_BODY FPN.*) "
                             "whose levels include FPN.RPN_MIN_LEVEL..RPN_MAX_LEVEL (%d..%d)"
                             % (k_min, k_max))
        self.retinanet_levels = slice(k_min - body_min, k_max - body_min + 1)
        self.RetinaNet = retinanet_head_from_cfg(dim)
        self.retinanet_loss_params = RetinaNetLossParams.from_cfg()
        self.RPN = self.Box_Head = self.Box_Outs = None
        self.Mask_Head = self.Mask_Outs = self.Keypoint_Head = self.Keypoint_Outs = None
        self.mask_on = self.keypoints_on = False
        self.postprocess_params = None

    def _forward_retinanet(self, data, im_info, roidb):
        from pydetectron.modeling.retinanet_heads import retinanet_losses
        blob_conv = self.Conv_Body(data)[self.retinanet_levels]
        cls_logits, bbox_pred = self.RetinaNet(blob_conv)
        if self.training:
            return retinanet_losses(self.RetinaNet, cls_logits, bbox_pred, roidb,
                                    self.retinanet_loss_params)
        return {"blob_conv": blob_conv, "retnet_cls_prob": self.RetinaNet.probabilities(cls_logits),
                "retnet_bbox_pred": bbox_pred}

    # ------------------------------------------------------------------------------------------ #
    # Forward
    # ------------------------------------------------------------------------------------------ #

    def _rpn_levels(self, blob_conv):
        return blob_conv[:self.num_rpn_levels] if self.multilevel else blob_conv

    def _roi_levels(self, blob_conv):
        return blob_conv[:self.num_roi_levels] if self.multilevel else blob_conv

    def forward(self, data, im_info, roidb=None, rois=None):
        """See the module docstring. data (N, 3, H, W); im_info (N, 3) = (height, width, scale)."""
        if data.dim() != 4 or data.shape[1] != 3:
            raise ValueError("data must be an (N, 3, H, W) BGR blob, got shape %s"
                             % (tuple(data.shape),))
        im_info = torch.as_tensor(im_info, dtype=torch.float32, device=data.device)
        if im_info.shape != (data.shape[0], 3):
            raise ValueError("im_info must be (N, 3) = (height, width, im_scale) for N = %d images, "
                             "got shape %s" % (data.shape[0], tuple(im_info.shape)))
        if self.RetinaNet is not None:
            return self._forward_retinanet(data, im_info, roidb)
        if self.training:
            return self._forward_train(data, im_info, roidb, rois)
        return self._forward_test(data, im_info, rois)

    def _forward_test(self, data, im_info, rois=None):
        if rois is None and self.uses_test_front(data):
            return self.front_outputs(self.test_front(data, im_info))
        blob_conv = self.Conv_Body(data)
        out = {}
        if rois is not None and self.rpn_only:
            raise ValueError("rois given to an RPN-only model (MODEL.RPN_ONLY): it has no heads to "
                             "run on them")
        if self.RPN is not None and (self.faster_rcnn or self.rpn_only) and rois is None:
            rpn_ret = self.RPN(self._rpn_levels(blob_conv), im_info, need_proposals=True)
            rois, rpn_roi_probs = rpn_ret["rpn_rois"], rpn_ret["rpn_roi_probs"]
            if self.rpn_only:
                out["rpn_roi_probs"] = rpn_roi_probs
        elif rois is None:
            raise ValueError("this model takes precomputed proposals (MODEL.FASTER_RCNN is False): "
                             "pass rois=(R, 5) tensor of (image index, x1, y1, x2, y2) in blob scale")
        else:
            rois = torch.as_tensor(rois, dtype=torch.float32, device=data.device)
        blob_conv = self._roi_levels(blob_conv)
        out["blob_conv"] = blob_conv
        out["rois"] = rois
        if self.rpn_only:
            return out
        cls_logits, bbox_pred = self.Box_Outs.logits_and_deltas(self.Box_Head(blob_conv, rois))
        out["cls_score"] = torch.softmax(cls_logits, dim=1)
        out["cls_logits"] = cls_logits
        out["bbox_pred"] = bbox_pred
        return out

    def uses_test_front(self, data):
        """Whether ``forward`` in inference on ``data`` runs through ``test_front``: one image
        of an end-to-end Faster / Mask / Keypoint R-CNN (RPN proposals, box head) when
        ``self.padded_test_front`` is True (default False: the unpadded proposals, whose count
        the host reads). The detections are the same either way (``test_front``); test_net's
        ``--front_graphs`` calls ``test_front`` itself."""
        return (bool(getattr(self, "padded_test_front", False)) and data.shape[0] == 1
                and self.test_front_possible())

    def test_front_possible(self):
        """Whether this model's test path has a ``test_front``: an RPN and a box head."""
        return (self.RPN is not None and self.faster_rcnn and not self.rpn_only
                and self.RetinaNet is None)

    def test_front(self, data, im_info):
        """The front of the test path -- body, RPN, proposals, box head -- for one image, in
        shapes fixed by the blob's and the config alone and with no host synchronisation, so
        that it can be queued ahead and replayed as one CUDA graph (``core.cuda_graphs``).

        The proposals are ``generate_multilevel_proposals``' padded rows: the image's proposals
        first, exactly the unpadded ones in their order, then dropped candidates, flagged by
        ``valid``; the box head runs on every row. Returns a flat tuple of tensors:
        (*roi_levels, rois, valid, cls_score, cls_logits, bbox_pred), roi_levels being the
        body's RoI levels (one tensor for a C4 model). ``front_outputs`` makes ``forward``'s
        dict of it, the padding rows dropped."""
        blob_conv = self.Conv_Body(data)
        rpn_ret = self.RPN(self._rpn_levels(blob_conv), im_info, need_proposals=False)
        self.RPN.add_proposals(rpn_ret, im_info, padded=True)
        rois, valid = rpn_ret["rpn_rois"], rpn_ret["rpn_rois_valid"]
        levels = self._roi_levels(blob_conv)
        cls_logits, bbox_pred = self.Box_Outs.logits_and_deltas(self.Box_Head(levels, rois))
        levels = tuple(levels) if self.multilevel else (levels,)
        return levels + (rois, valid, torch.softmax(cls_logits, dim=1), cls_logits, bbox_pred)

    def front_outputs(self, front):
        """``forward``'s inference dict from ``test_front``'s tuple: its rows of valid proposals
        (one host synchronisation: their count)."""
        levels, (rois, valid, cls_score, cls_logits, bbox_pred) = front[:-5], front[-5:]
        keep = torch.nonzero(valid).squeeze(1)
        return {"blob_conv": list(levels) if self.multilevel else levels[0],
                "rois": rois[keep], "cls_score": cls_score[keep],
                "cls_logits": cls_logits[keep], "bbox_pred": bbox_pred[keep]}

    def _forward_train(self, data, im_info, roidb, rois=None):
        blob_conv = self.Conv_Body(data)
        rpn_ret = None
        if self.RPN is not None:
            # The proposals (end-to-end Faster R-CNN) come later, in training_losses: unless the
            # targets take fixed shapes (on CUDA: losses.fixed_target_shapes) their count is read
            # on the host, so everything that does not need them (ground-truth copies, RPN
            # targets and losses) is queued on the device first, while the body still runs.
            rpn_ret = self.RPN(self._rpn_levels(blob_conv), im_info, need_proposals=False)
        return self.training_losses(self._roi_levels(blob_conv), rpn_ret, im_info, roidb, rois)

    def training_losses(self, blob_conv, rpn_ret, im_info, roidb, rois=None):
        """Detectron's training targets and losses on the device (``modeling.losses``).

        Receives what the forward pass computed: ``blob_conv`` (the RoI levels), ``rpn_ret``
        (``rpn_cls_logits`` / ``rpn_bbox_pred`` / ``rpn_cls_probs`` -- per-level lists, finest
        first, for FPN -- and, for Faster R-CNN, ``rpn_rois`` (R, 5) / ``rpn_roi_probs``, which are
        generated here when absent), ``im_info`` and the collated
        ``roidb``. Returns ``{'losses': {...}, 'metrics': {...}}`` with Detectron's names. The
        fg/bg subsampling draws from ``self.target_generator`` when set (a ``torch.Generator`` on
        the model's device), else from torch's global RNG.
        """
        from pydetectron.modeling import losses
        return losses.generalized_rcnn_losses(
            self, blob_conv, rpn_ret, im_info, roidb, self.loss_params, rois,
            generator=getattr(self, "target_generator", None))

    def conv_body_only(self, data):
        """The body's features the RoI heads use (``forward``'s 'blob_conv'), without the RPN and
        heads (Detectron's ``conv_body_net``: test-time augmentation of masks and keypoints)."""
        return self._roi_levels(self.Conv_Body(data))

    # ------------------------------------------------------------------------------------------ #
    # Mask and keypoint branches (inference cascade: run on the detections)
    # ------------------------------------------------------------------------------------------ #

    def mask_net(self, blob_conv, rois):
        """(R, C, M, M) mask probabilities for ``rois`` (R, 5) in blob scale (C = 1 when the masks
        are class-agnostic)."""
        logits = self.mask_logits(blob_conv, rois)
        return logits if rois.shape[0] == 0 else torch.sigmoid(logits)

    def mask_logits(self, blob_conv, rois):
        """(R, C, M, M) mask logits (``mask_net``'s probabilities before the sigmoid)."""
        if self.Mask_Head is None:
            raise RuntimeError("mask_net: this model has no mask head (MODEL.MASK_ON is False)")
        if rois.shape[0] == 0:
            m = self.mask_resolution
            return rois.new_zeros((0, self.Mask_Outs.num_cls, m, m))
        return self.Mask_Outs(self.Mask_Head(blob_conv, rois))

    def keypoint_net(self, blob_conv, rois):
        """(R, K, Hk, Wk) keypoint heatmap scores (logits) for ``rois`` (R, 5) in blob scale."""
        if self.Keypoint_Head is None:
            raise RuntimeError("keypoint_net: this model has no keypoint head "
                               "(MODEL.KEYPOINTS_ON is False)")
        if rois.shape[0] == 0:
            s = self.heatmap_size
            return rois.new_zeros((0, self.num_keypoints, s, s))
        return self.Keypoint_Outs(self.Keypoint_Head(blob_conv, rois))

    @torch.no_grad()
    def detect(self, data, im_info, im_sizes=None, rois=None):
        """The whole test path on the device: see ``postprocess.detect``."""
        if self.training:
            raise RuntimeError("detect() needs model.eval()")
        if self.RetinaNet is not None:
            from pydetectron.modeling import retinanet_postprocess
            im_info = torch.as_tensor(im_info, dtype=torch.float32, device=data.device)
            return retinanet_postprocess.detect(self, data, im_info, im_sizes)
        return postprocess.detect(self, data, im_info, im_sizes, rois)

    # ------------------------------------------------------------------------------------------ #
    # Detectron weights
    # ------------------------------------------------------------------------------------------ #

    def detectron_weight_mapping(self):
        """(state-dict name -> Detectron blob name, Detectron blobs with no counterpart here)."""
        return merge_mappings({
            "Conv_Body": self.Conv_Body, "RPN": self.RPN, "Box_Head": self.Box_Head,
            "Box_Outs": self.Box_Outs, "Mask_Head": self.Mask_Head, "Mask_Outs": self.Mask_Outs,
            "Keypoint_Head": self.Keypoint_Head, "Keypoint_Outs": self.Keypoint_Outs,
            "RetinaNet": self.RetinaNet})
