"""Fast R-CNN box heads and their outputs (Detectron's ``fast_rcnn_heads.py``).

    ... -> RoI -> RoIFeatureTransform -> box head -> fast_rcnn_outputs -> (cls_score, bbox_pred)

Shapes: R RoIs, S = FAST_RCNN.ROI_XFORM_RESOLUTION, K = MODEL.NUM_CLASSES (background is class 0).

- ``roi_2mlp_head``: fc6, fc7 (MLP_HEAD_DIM, ReLU each) on the flattened (R, C * S * S) pool.
- ``roi_Xconv1fc_head``: NUM_STACKED_CONVS x (3x3 conv ``head_conv<i>``, CONV_HEAD_DIM, MSRAFill,
  ReLU) then fc6; ``roi_Xconv1fc_gn_head`` the same with GroupNorm (convs without bias).
- ``fast_rcnn_outputs``: ``cls_score`` (K; Gaussian 0.01) and ``bbox_pred`` (4K, or 4 x 2 with
  MODEL.CLS_AGNOSTIC_BBOX_REG; Gaussian 0.001); softmax is applied in inference only.
The fc layers are XavierFill with zero bias (Caffe2's defaults), as in Detectron.
"""
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.heads_common import ConvStack
from pydetectron.modeling.registry import ROI_BOX_HEAD
from pydetectron.modeling.roi_xform import RoIFeatureTransform
from pydetectron.modeling.weight_mapping import blob_mapping, merge_mappings
from pydetectron.nn.init import init_layer

__all__ = ["fast_rcnn_outputs", "roi_2mlp_head", "roi_Xconv1fc_head", "roi_Xconv1fc_gn_head"]


class fast_rcnn_outputs(nn.Module):
    """(R, dim_in[, 1, 1]) -> cls_score (R, K) (softmax probabilities in eval mode),
    bbox_pred (R, 4K)."""

    def __init__(self, dim_in, num_classes, cls_agnostic_bbox_reg=False):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = init_layer(nn.Linear(dim_in, num_classes), "GaussianFill", 0.01)
        num_bbox_reg_classes = 2 if cls_agnostic_bbox_reg else num_classes
        self.bbox_pred = init_layer(nn.Linear(dim_in, 4 * num_bbox_reg_classes), "GaussianFill",
                                    0.001)

    def forward(self, x):
        cls_logits, bbox_pred = self.logits_and_deltas(x)
        if not self.training:  # Detectron adds the softmax at test time only
            return F.softmax(cls_logits, dim=1), bbox_pred
        return cls_logits, bbox_pred

    def logits_and_deltas(self, x):
        """(R, NUM_CLASSES) raw class logits and (R, 4 x classes) deltas, in any mode."""
        x = x.flatten(1)  # Caffe2's FC flattens (R, C, 1, 1) to (R, C)
        return self.cls_score(x), self.bbox_pred(x)

    def detectron_weight_mapping(self):
        return blob_mapping(self, {"cls_score": "cls_score", "bbox_pred": "bbox_pred"}), []


class roi_2mlp_head(nn.Module):
    """RoI transform -> fc6 -> ReLU -> fc7 -> ReLU: (R, hidden_dim)."""

    def __init__(self, dim_in, roi_xform, hidden_dim=1024):
        super().__init__()
        self.roi_xform = roi_xform
        s = roi_xform.resolution
        self.fc6 = init_layer(nn.Linear(dim_in * s * s, hidden_dim))
        self.fc7 = init_layer(nn.Linear(hidden_dim, hidden_dim))
        self.dim_out = hidden_dim

    def forward(self, blob_conv, rois):
        x = self.roi_xform(blob_conv, rois).flatten(1)  # (R, C * S * S), channel-major
        x = F.relu(self.fc6(x), inplace=True)
        return F.relu(self.fc7(x), inplace=True)

    def detectron_weight_mapping(self):
        return blob_mapping(self, {"fc6": "fc6", "fc7": "fc7"}), []


class roi_Xconv1fc_head(nn.Module):
    """RoI transform -> num_convs x (3x3 conv [-> GN] -> ReLU) -> fc6 -> ReLU: (R, fc_dim)."""

    def __init__(self, dim_in, roi_xform, num_convs=4, conv_dim=256, fc_dim=1024, gn=None):
        super().__init__()
        self.roi_xform = roi_xform
        self.convs = ConvStack(dim_in, conv_dim, num_convs, "head_conv%d", weight_fill="MSRAFill",
                               gn=gn)
        self.use_gn = gn is not None
        s = roi_xform.resolution
        self.fc6 = init_layer(nn.Linear(self.convs.dim_out * s * s, fc_dim))
        self.dim_out = fc_dim

    def forward(self, blob_conv, rois):
        x = self.convs(self.roi_xform(blob_conv, rois))
        return F.relu(self.fc6(x.flatten(1)), inplace=True)

    def detectron_weight_mapping(self):
        mapping = blob_mapping(self, {"fc6": "fc6"})
        mapping.update(merge_mappings({"convs": self.convs})[0])
        return mapping, []


def roi_Xconv1fc_gn_head(dim_in, roi_xform, num_convs=4, conv_dim=256, fc_dim=1024,
                         gn=(-1, 32, 1e-5)):
    """``roi_Xconv1fc_head`` with GroupNorm after each conv.

    ``gn`` = (dim_per_gp, num_groups, eps).
    """
    return roi_Xconv1fc_head(dim_in, roi_xform, num_convs, conv_dim, fc_dim, gn=gn)


def _gn_from_cfg():
    from pydetectron.core.config import cfg
    return (cfg.GROUP_NORM.DIM_PER_GP, cfg.GROUP_NORM.NUM_GROUPS, cfg.GROUP_NORM.EPSILON)


@ROI_BOX_HEAD.register("fast_rcnn_heads.roi_2mlp_head")
def _roi_2mlp_head_from_cfg(dim_in, spatial_scale):
    from pydetectron.core.config import cfg
    return roi_2mlp_head(dim_in, RoIFeatureTransform.from_cfg("FAST_RCNN", spatial_scale),
                         cfg.FAST_RCNN.MLP_HEAD_DIM)


@ROI_BOX_HEAD.register("fast_rcnn_heads.roi_Xconv1fc_head")
def _roi_Xconv1fc_head_from_cfg(dim_in, spatial_scale):
    from pydetectron.core.config import cfg
    f = cfg.FAST_RCNN
    return roi_Xconv1fc_head(dim_in, RoIFeatureTransform.from_cfg("FAST_RCNN", spatial_scale),
                             f.NUM_STACKED_CONVS, f.CONV_HEAD_DIM, f.MLP_HEAD_DIM)


@ROI_BOX_HEAD.register("fast_rcnn_heads.roi_Xconv1fc_gn_head")
def _roi_Xconv1fc_gn_head_from_cfg(dim_in, spatial_scale):
    from pydetectron.core.config import cfg
    f = cfg.FAST_RCNN
    return roi_Xconv1fc_gn_head(dim_in, RoIFeatureTransform.from_cfg("FAST_RCNN", spatial_scale),
                                f.NUM_STACKED_CONVS, f.CONV_HEAD_DIM, f.MLP_HEAD_DIM,
                                gn=_gn_from_cfg())
