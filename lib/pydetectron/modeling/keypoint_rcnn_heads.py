"""Keypoint R-CNN head and output (Detectron's ``keypoint_rcnn_heads.py``).

    ... -> RoI -> RoIFeatureTransform -> roi_pose_head_v1convX -> keypoint_outputs -> heatmaps

Shapes: R RoIs, S = KRCNN.ROI_XFORM_RESOLUTION, K = KRCNN.NUM_KEYPOINTS.

- ``roi_pose_head_v1convX``: NUM_STACKED_CONVS x (``conv_fcn<i>``: CONV_HEAD_KERNEL conv,
  CONV_HEAD_DIM channels, ReLU); KRCNN.CONV_INIT with std 0.01.
- ``keypoint_outputs``: optional ``kps_deconv`` (USE_DECONV: DECONV_KERNEL transposed conv,
  stride 2, DECONV_DIM, ReLU); the scores ``kps_score_lowres`` -- a stride-2 transposed conv with
  USE_DECONV_OUTPUT, else a 1x1 conv -- then, when UP_SCALE > 1, the fixed bilinear upsampling
  ``kps_score``. With the COCO configs: 14 -> 28 (deconv) -> 56 (bilinear) = HEATMAP_SIZE.
The outputs are scores (logits): the spatial softmax belongs to the loss / keypoint decoding.
"""
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.heads_common import ConvStack
from pydetectron.modeling.registry import ROI_KEYPOINTS_HEAD
from pydetectron.modeling.roi_xform import RoIFeatureTransform
from pydetectron.modeling.weight_mapping import blob_mapping, merge_mappings
from pydetectron.nn.init import init_layer
from pydetectron.nn.upsample import BilinearInterpolation2d

__all__ = ["roi_pose_head_v1convX", "keypoint_outputs"]


class roi_pose_head_v1convX(nn.Module):
    """RoI transform -> num_convs x (conv -> ReLU): (R, dim_in, S, S) -> (R, hidden_dim, S, S)."""

    def __init__(self, dim_in, roi_xform, num_convs=8, hidden_dim=512, kernel_size=3,
                 conv_init="GaussianFill"):
        super().__init__()
        self.roi_xform = roi_xform
        # Flat layout: the convs are conv_fcn.<i> themselves (no GroupNorm in this head)
        self.conv_fcn = ConvStack(dim_in, hidden_dim, num_convs, "conv_fcn%d", kernel_size,
                                  weight_fill=conv_init, std=0.01, nested=False)
        self.dim_out = self.conv_fcn.dim_out

    def forward(self, blob_conv, rois):
        return self.conv_fcn(self.roi_xform(blob_conv, rois))

    def detectron_weight_mapping(self):
        return merge_mappings({"conv_fcn": self.conv_fcn})


class keypoint_outputs(nn.Module):
    """(R, dim_in, S, S) -> (R, K, HEATMAP_SIZE, HEATMAP_SIZE) keypoint heatmap scores."""

    def __init__(self, dim_in, num_keypoints, use_deconv=False, deconv_dim=256, deconv_kernel=4,
                 use_deconv_output=False, up_scale=-1, conv_init="GaussianFill"):
        super().__init__()
        pad = int(deconv_kernel / 2 - 1)  # a stride-2 transposed conv that exactly doubles the size
        self.deconv = None
        if use_deconv:
            self.deconv = init_layer(nn.ConvTranspose2d(dim_in, deconv_dim, deconv_kernel, stride=2,
                                                        padding=pad), "GaussianFill", 0.01)
            dim_in = deconv_dim
        if use_deconv_output:
            self.score = init_layer(nn.ConvTranspose2d(dim_in, num_keypoints, deconv_kernel,
                                                       stride=2, padding=pad), conv_init, 0.001)
        else:
            self.score = init_layer(nn.Conv2d(dim_in, num_keypoints, 1), conv_init, 0.001)
        self.upsample = None
        if up_scale > 1:
            self.upsample = BilinearInterpolation2d(num_keypoints, num_keypoints, up_scale)

    def forward(self, x):
        if self.deconv is not None:
            x = F.relu(self.deconv(x), inplace=True)
        x = self.score(x)
        return self.upsample(x) if self.upsample is not None else x

    def detectron_weight_mapping(self):
        names = {}
        if self.deconv is not None:
            names["deconv"] = "kps_deconv"
        if self.upsample is not None:
            names["score"] = "kps_score_lowres"
            names["upsample"] = "kps_score"
        else:
            names["score"] = "kps_score"
        return blob_mapping(self, names), []


@ROI_KEYPOINTS_HEAD.register("keypoint_rcnn_heads.roi_pose_head_v1convX")
def _roi_pose_head_v1convX_from_cfg(dim_in, spatial_scale):
    from pydetectron.core.config import cfg
    k = cfg.KRCNN
    return roi_pose_head_v1convX(dim_in, RoIFeatureTransform.from_cfg("KRCNN", spatial_scale),
                                 k.NUM_STACKED_CONVS, k.CONV_HEAD_DIM, k.CONV_HEAD_KERNEL,
                                 k.CONV_INIT)


def keypoint_outputs_from_cfg(dim_in):
    from pydetectron.core.config import cfg
    k = cfg.KRCNN
    return keypoint_outputs(dim_in, k.NUM_KEYPOINTS, k.USE_DECONV, k.DECONV_DIM, k.DECONV_KERNEL,
                            k.USE_DECONV_OUTPUT, k.UP_SCALE, k.CONV_INIT)
