"""Building blocks shared by the RoI heads.

``ConvStack``: the ``num_convs x (conv [-> GroupNorm] -> ReLU)`` tower that Detectron's box head
(``roi_Xconv1fc[_gn]_head``), mask heads (``mask_rcnn_fcn_head_v1upXconvs``) and keypoint head
(``roi_pose_head_v1convX``) each write out by hand. The heads differ only in the conv geometry,
the fill, the blob names and how the parameters are laid out in the state dict, so those are
arguments here; the parameter names stay the ones each head always had, so Detectron weights and
older checkpoints load unchanged.
"""
import torch.nn.functional as F
from torch import nn

from pydetectron.modeling.weight_mapping import blob_mapping
from pydetectron.nn.affine import conv_norm_relu
from pydetectron.nn.group_norm import GroupNorm
from pydetectron.nn.init import init_layer

__all__ = ["ConvStack"]


class ConvStack(nn.ModuleList):
    """``num_convs`` x (conv [-> GroupNorm] -> ReLU): (R, dim_in, H, W) -> (R, dim_out, H', W')
    (H' = H, W' = W with the default padding and an odd kernel).

    Arguments:
        dim_in, dim_out: channels in and out of the stack (every conv outputs ``dim_out``).
        num_convs: number of convs (0 gives an empty stack that returns its input).
        blob: the Detectron blob name of conv ``i`` as a ``%d`` format of ``i + 1``
            (``"head_conv%d"``); the GroupNorm of conv ``i`` is ``blob % (i + 1) + "_gn"``.
        kernel_size, padding, dilation: the conv geometry (``padding`` None: ``kernel_size // 2
            * dilation``, which keeps H and W for an odd kernel).
        weight_fill, std: the Caffe2 fill of the conv weights (``std`` for GaussianFill); biases
            are zero.
        gn: None, or ``(dim_per_gp, num_groups, eps)`` for a GroupNorm after each conv (the convs
            then have no bias, as in Detectron).
        nested: the state dict layout. True: entry ``i`` is a module holding ``conv`` (and ``gn``),
            so the names are ``<i>.conv.weight``, ``<i>.gn.weight``; False: entry ``i`` is the conv
            itself (``<i>.weight``; the keypoint head's layout), which cannot hold a GroupNorm.
    """

    def __init__(self, dim_in, dim_out, num_convs, blob, kernel_size=3, padding=None, dilation=1,
                 weight_fill="MSRAFill", std=0.01, gn=None, nested=True):
        if not isinstance(num_convs, int) or isinstance(num_convs, bool) or num_convs < 0:
            raise ValueError("ConvStack: num_convs must be an int >= 0, got %r" % (num_convs,))
        if not nested and gn is not None:
            raise ValueError("ConvStack: gn needs nested=True (a flat entry is the conv itself "
                             "and has no room for its GroupNorm)")
        try:
            blob % 1
        except TypeError:
            raise ValueError("ConvStack: blob must be a '%%d' format of the conv number, got %r"
                             % (blob,)) from None
        if padding is None:
            padding = kernel_size // 2 * dilation
        layers = []
        for _ in range(num_convs):
            conv = init_layer(nn.Conv2d(dim_in, dim_out, kernel_size, padding=padding,
                                        dilation=dilation, bias=gn is None), weight_fill, std)
            if nested:
                layer = nn.Module()
                layer.conv = conv
                if gn is not None:
                    layer.gn = GroupNorm(dim_out, *gn)
            else:
                layer = conv
            layers.append(layer)
            dim_in = dim_out
        super().__init__(layers)
        self.blob = blob
        self.use_gn = gn is not None
        self.nested = nested
        self.dim_out = dim_in  # dim_out, or the input's channels when the stack is empty

    def forward(self, x):
        for layer in self:
            if self.nested:
                if self.use_gn:                       # the ReLU in GroupNorm's pass where it can
                    x = conv_norm_relu(x, layer.conv, layer.gn)
                    continue
                x = layer.conv(x)
            else:
                x = layer(x)
            x = F.relu(x, inplace=True)
        return x

    def detectron_weight_mapping(self):
        names = {}
        for i in range(len(self)):
            blob = self.blob % (i + 1)
            if self.nested:
                names["%d.conv" % i] = blob
                if self.use_gn:
                    names["%d.gn" % i] = blob + "_gn"
            else:
                names[str(i)] = blob
        return blob_mapping(self, names), []
