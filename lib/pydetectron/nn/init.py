"""Caffe2's parameter fills, as Detectron's model builders name them.

Detectron names an initialiser per layer (``('XavierFill', {})``, ``('MSRAFill', {})``,
``('GaussianFill', {'std': 0.01})``, ``ConstantFill``); a layer with none gets XavierFill weights
and zero biases (the Caffe2 ``brew`` defaults). Caffe2's definitions differ from PyTorch's
functions of the same names, so they are written out here:

- XavierFill: uniform on [-s, s] with s = sqrt(3 / fan_in), fan_in = numel / shape[0].
- MSRAFill: normal with mean 0 and std sqrt(2 / fan_out), fan_out = numel / shape[1].
- GaussianFill: normal with mean 0 and the given std.

Caffe2's weight layouts are PyTorch's (conv: (out, in, kh, kw); FC: (out, in); transposed conv:
(in, out, kh, kw)), so ``shape[0]`` and ``shape[1]`` mean the same thing in both.
"""
import math

import torch

__all__ = ["XavierFill", "MSRAFill", "GaussianFill", "ConstantFill", "fill_by_name", "init_layer",
           "FILLS"]


@torch.no_grad()
def XavierFill(tensor):
    """Caffe2 XavierFill: U(-sqrt(3 / fan_in), sqrt(3 / fan_in)), fan_in = numel / shape[0]."""
    fan_in = tensor.numel() / tensor.shape[0]
    scale = math.sqrt(3.0 / fan_in)
    return tensor.uniform_(-scale, scale)


@torch.no_grad()
def MSRAFill(tensor):
    """Caffe2 MSRAFill: N(0, sqrt(2 / fan_out)), fan_out = numel / shape[1]."""
    if tensor.dim() < 2:
        raise ValueError("MSRAFill needs a tensor of at least 2 dims, got shape %s"
                         % (tuple(tensor.shape),))
    fan_out = tensor.numel() / tensor.shape[1]
    return tensor.normal_(0.0, math.sqrt(2.0 / fan_out))


@torch.no_grad()
def GaussianFill(tensor, std=0.01):
    """Caffe2 GaussianFill: N(0, std)."""
    return tensor.normal_(0.0, std)


@torch.no_grad()
def ConstantFill(tensor, value=0.0):
    """Caffe2 ConstantFill."""
    return tensor.fill_(value)


FILLS = {"XavierFill": XavierFill, "MSRAFill": MSRAFill, "GaussianFill": GaussianFill,
         "ConstantFill": ConstantFill}


def fill_by_name(tensor, name, std=0.01):
    """Apply the Caffe2 fill called ``name`` (a config value such as ``cfg.MRCNN.CONV_INIT``).

    ``std`` only matters for GaussianFill, as in Detectron's ``(fill, {'std': ...})`` pairs.
    """
    if name == "GaussianFill":
        return GaussianFill(tensor, std)
    if name == "ConstantFill":
        return ConstantFill(tensor, 0.0)
    if name not in FILLS:
        raise ValueError("unknown weight fill %r; expected one of %s" % (name, sorted(FILLS)))
    return FILLS[name](tensor)


def init_layer(layer, weight_fill="XavierFill", std=0.01, bias_value=0.0):
    """Initialise a conv / linear / transposed-conv layer the way Detectron's builders do."""
    fill_by_name(layer.weight, weight_fill, std)
    if getattr(layer, "bias", None) is not None:
        ConstantFill(layer.bias, bias_value)
    return layer
