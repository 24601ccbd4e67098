"""ImageNet weights for the ResNet / ResNeXt backbones.

Two kinds of files (``RESNETS.IMAGENET_PRETRAINED_WEIGHTS``, used when
``MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS``):

- Detectron's ``*.pkl`` (``R-50.pkl``, ``R-101.pkl``, ``R-50-GN.pkl``, ``X-101-32x8d.pkl``, ...):
  Caffe2 blob names, BN already folded into ``_bn_s`` / ``_bn_b`` (or GroupNorm ``_gn_s`` / ``_gn_b``).
- Caffe-converted PyTorch files (``resnet50_caffe.pth`` style, torchvision-like names ``conv1``,
  ``bn1``, ``layer1.0.conv1`` ...) with real BN statistics, folded here into AffineChannel scale
  and bias: s = gamma / sqrt(var + 1e-5), b = beta - mean * s (Caffe's BN epsilon).

Only backbone blobs are loaded (``conv1``, ``res_conv1_bn``, ``res<k>_<i>_*``, and the heads'
``_[mask]_res5_*`` copies through Detectron's fallback), wherever they sit in the model -- the C4
box head's res5 stage included; the other layers keep their initialisation. Every backbone
parameter must be in the file.
"""
import os
import re

import torch

from pydetectron.utils.detectron_weight_helper import load_detectron_blobs, load_detectron_pkl
from pydetectron.utils.errors import CheckpointError, WeightsMismatchError

__all__ = ["load_pretrained_imagenet_weights", "is_backbone_blob", "convert_caffe_resnet_state_dict",
           "BN_EPS"]

BN_EPS = 1e-5  # Caffe's BatchNorm epsilon, which the converted models used

_BACKBONE_BLOB = re.compile(r"^(_\[\w+\]_)?(conv1_w|res_conv1_bn_[sb]|conv1_gn_[sb]|res\d+_\d+_\w+)$")


def is_backbone_blob(blob):
    """True for the blobs an ImageNet backbone file provides (stem and residual stages)."""
    return _BACKBONE_BLOB.match(blob) is not None


def _fold_bn(state, prefix):
    weight, bias = state[prefix + ".weight"], state[prefix + ".bias"]
    mean, var = state[prefix + ".running_mean"], state[prefix + ".running_var"]
    scale = weight / torch.sqrt(var + BN_EPS)
    return scale, bias - mean * scale


def convert_caffe_resnet_state_dict(state):
    """{Detectron blob name: numpy array} from a Caffe-converted torchvision-style ResNet state dict."""
    blobs = {}
    names = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c",
             "downsample.0": "branch1", "downsample.1": "branch1_bn",
             "bn1": "branch2a_bn", "bn2": "branch2b_bn", "bn3": "branch2c_bn"}
    block = re.compile(r"^layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.")
    done = set()
    for key in state:
        if key == "conv1.weight":
            blobs["conv1_w"] = state[key]
        elif key.startswith("bn1.") and "bn1" not in done:
            blobs["res_conv1_bn_s"], blobs["res_conv1_bn_b"] = _fold_bn(state, "bn1")
            done.add("bn1")
        else:
            m = block.match(key)
            if m is None:
                continue  # fc (the ImageNet classifier), num_batches_tracked, ...
            stage, index, layer = int(m.group(1)) + 1, int(m.group(2)), m.group(3)
            prefix = "layer%s.%s.%s" % (m.group(1), m.group(2), layer)
            blob = "res%d_%d_%s" % (stage, index, names[layer])
            if blob.endswith("_bn"):
                if prefix not in done:
                    blobs[blob + "_s"], blobs[blob + "_b"] = _fold_bn(state, prefix)
                    done.add(prefix)
            elif key.endswith(".weight"):
                blobs[blob + "_w"] = state[key]
    return {k: v.detach().cpu().float().numpy() for k, v in blobs.items()}


def _resolve(path):
    from pydetectron.core.config import cfg
    if not path:
        path = cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS
    if not path:
        raise ValueError("no ImageNet weights named: set RESNETS.IMAGENET_PRETRAINED_WEIGHTS")
    if not os.path.isabs(path):
        path = os.path.join(cfg.ROOT_DIR, path)
    if not os.path.isfile(path):
        raise FileNotFoundError("ImageNet weights file not found: %s (get it with "
                                "tools/download_imagenet_weights.py)" % path)
    return path


def load_pretrained_imagenet_weights(model, weights_file=None):
    """Load ImageNet backbone weights into ``model`` (default file: RESNETS.IMAGENET_PRETRAINED_WEIGHTS,
    relative paths from ROOT_DIR). Returns the ``LoadReport``."""
    path = _resolve(weights_file)
    if os.path.splitext(path)[1] == ".pkl":
        blobs = load_detectron_pkl(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or holding code
            raise CheckpointError("ImageNet weights %s cannot be read with weights_only=True "
                                  "(truncated or not a torch file?): %s: %s"
                                  % (path, type(e).__name__, str(e).splitlines()[0] if str(e)
                                     else "")) from e
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or "conv1.weight" not in state:
            raise WeightsMismatchError("%s: expected a Caffe-converted ResNet state dict "
                                       "(conv1.weight, bn1.*, layer1.0.conv1.weight, ...)" % path)
        blobs = convert_caffe_resnet_state_dict(state)
    return load_detectron_blobs(model, blobs, path, blob_filter=is_backbone_blob)
