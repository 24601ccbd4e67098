"""Detectron.pytorch checkpoints (``.pth``) read into this project's models.

Detectron.pytorch's ``tools/train_net_step.py`` saves ``{'step', 'train_size', 'batch_size',
'model', 'optimizer'}`` (its older ``train_net.py``: ``'epoch'`` and ``'iters_per_epoch'``
instead of the sizes), ``'model'`` being the ``state_dict`` of its ``Generalized_RCNN``. Its
module names differ from this project's (``Conv_Body.conv_body.res2.0.conv1`` is
``Conv_Body.conv_body.res2.0.branch2a`` here, ``RPN.FPN_RPN_conv`` is ``RPN.rpn.conv_rpn``, ...),
but both projects name every tensor after the Detectron blob it corresponds to. So the converter
goes through Detectron's names: each key of the checkpoint gets its blob name from the rules below
(the ones Detectron.pytorch's own ``detectron_weight_mapping`` follows), and the resulting
``{blob: array}`` dict loads exactly like a Detectron ``.pkl`` (``load_detectron_blobs``).

Keys mapped to ``None`` hold nothing to load: a copy of a shared module (the res5 stage a C4 mask
head shares with the box head) or a fixed tensor (the keypoint head's bilinear upsampling). A key
no rule knows raises ``ValueError`` naming it.

Files written with PyTorch 0.3 / 0.4 use the legacy (non-zip) serialization; ``torch.load`` with
``weights_only=True`` reads both formats (``read_checkpoint``).
"""
import re

import numpy as np
import torch

__all__ = ["is_detectron_pytorch_state_dict", "detectron_pytorch_blob_names",
           "detectron_pytorch_to_blobs", "read_checkpoint"]

# Module names that exist only in Detectron.pytorch's Generalized_RCNN.
_MARKERS = re.compile(
    r"^(Conv_Body\.(conv_body\.)?res1\.(bn1|gn1)\.|Conv_Body\.(conv_body\.)?res\d\.\d+\.conv1\.|"
    r"Conv_Body\.conv_top\.|RPN\.(FPN_)?RPN_conv\.|Box_Head\.fc1\.|Mask_Head\.conv_fcn\.|"
    r"Keypoint_Outs\.classify\.)")

_BRANCH2 = {"1": "a", "2": "b", "3": "c"}
_SUFFIX = {"weight": "w", "bias": "b"}
_NORM_SUFFIX = {"weight": "s", "bias": "b"}


def read_checkpoint(path):
    """``torch.load(path, weights_only=True)`` on the CPU: Detectron.pytorch's legacy files and
    zip files alike. Errors propagate to the caller, which knows what the file was for."""
    return torch.load(path, map_location="cpu", weights_only=True)


def is_detectron_pytorch_state_dict(state_dict):
    """True when the keys of ``state_dict`` use Detectron.pytorch's module names."""
    return any(_MARKERS.match(k) for k in state_dict)


def _stage_last_blocks(keys):
    """{stage: index of its last block} from the ResNet keys of the body (res2..res5)."""
    last = {}
    for k in keys:
        m = re.match(r"^Conv_Body\.(?:conv_body\.)?res(\d)\.(\d+)\.", k)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            last[stage] = max(last.get(stage, -1), block)
    return last


def _sequential_layers(keys, prefix):
    """{index in the nn.Sequential under ``prefix``: (layer number from 1, 'conv' | 'norm')}.

    Detectron.pytorch builds its conv heads as Sequential(conv, [GroupNorm,] ReLU, conv, ...):
    a 4-D weight is a conv, a 1-D one the norm that follows it."""
    entries = {}
    for k, shape in keys.items():
        if k.startswith(prefix):
            rest = k[len(prefix):].split(".")
            if len(rest) == 2 and rest[1] == "weight":
                entries[int(rest[0])] = "conv" if len(shape) == 4 else "norm"
    layers, n = {}, 0
    for idx in sorted(entries):
        if entries[idx] == "conv":
            n += 1
        layers[idx] = (n, entries[idx])
    return layers


def _resnet_blob(rest, norm):
    """Blob of a ResNet key relative to its stage container (``res2.0.conv1.weight``)."""
    m = re.match(r"^res1\.conv1\.weight$", rest)
    if m:
        return "conv1_w"
    m = re.match(r"^res1\.(bn1|gn1)\.(weight|bias)$", rest)
    if m:
        if m.group(1) == "bn1":
            return "res_conv1_bn_" + _NORM_SUFFIX[m.group(2)]
        return "conv1_gn_" + _NORM_SUFFIX[m.group(2)]
    m = re.match(r"^res(\d)\.(\d+)\.conv([123])\.weight$", rest)
    if m:
        return "res%s_%s_branch2%s_w" % (m.group(1), m.group(2), _BRANCH2[m.group(3)])
    m = re.match(r"^res(\d)\.(\d+)\.(bn|gn)([123])\.(weight|bias)$", rest)
    if m:
        return "res%s_%s_branch2%s_%s_%s" % (m.group(1), m.group(2), _BRANCH2[m.group(4)],
                                             m.group(3), _NORM_SUFFIX[m.group(5)])
    m = re.match(r"^res(\d)\.(\d+)\.downsample\.0\.weight$", rest)
    if m:
        return "res%s_%s_branch1_w" % (m.group(1), m.group(2))
    m = re.match(r"^res(\d)\.(\d+)\.downsample\.1\.(weight|bias)$", rest)
    if m:
        return "res%s_%s_branch1_%s_%s" % (m.group(1), m.group(2), norm,
                                           _NORM_SUFFIX[m.group(3)])
    return False


def _fpn_blob(rest, last):
    """Blob of an FPN key of Conv_Body (``conv_top``, ``topdown_lateral_modules.i``,
    ``posthoc_modules.i``), named after the last block of the stage it reads."""
    def conv_or_gn(base, tail):
        m = re.match(r"^(?:0\.)?(weight|bias)$", tail)
        if m and not tail.startswith("1."):
            return base + "_" + _SUFFIX[m.group(1)]
        m = re.match(r"^1\.(weight|bias)$", tail)
        if m:
            return base + "_gn_" + _NORM_SUFFIX[m.group(1)]
        return False

    m = re.match(r"^conv_top\.(.+)$", rest)
    if m:
        return conv_or_gn("fpn_inner_res5_%d_sum" % last[5], m.group(1))
    m = re.match(r"^topdown_lateral_modules\.(\d+)\.conv_lateral\.(.+)$", rest)
    if m:
        stage = 4 - int(m.group(1))
        return conv_or_gn("fpn_inner_res%d_%d_sum_lateral" % (stage, last[stage]), m.group(2))
    m = re.match(r"^posthoc_modules\.(\d+)\.(.+)$", rest)
    if m:
        stage = 5 - int(m.group(1))
        return conv_or_gn("fpn_res%d_%d_sum" % (stage, last[stage]), m.group(2))
    return False


def detectron_pytorch_blob_names(shapes, rpn_min_level=2):
    """{key: Detectron blob name or None} for the keys of a Detectron.pytorch state dict.

    ``shapes`` maps each key to its shape (a tensor's ``.shape`` or a list). ``rpn_min_level`` is
    FPN.RPN_MIN_LEVEL (the FPN RPN's blobs are named after it). Raises ``ValueError`` listing the
    keys no rule knows.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    keys = list(shapes)
    last = _stage_last_blocks(keys)
    norm = "gn" if any(re.search(r"\.(gn\d|res1\.gn1)\.", k) for k in keys) else "bn"
    box_convs = _sequential_layers(shapes, "Box_Head.convs.")
    mask_convs = _sequential_layers(shapes, "Mask_Head.conv_fcn.")
    mask_gn = any(kind == "norm" for _, kind in mask_convs.values())
    kps_convs = _sequential_layers(shapes, "Keypoint_Head.conv_fcn.")

    out, unknown = {}, []
    for k in keys:
        blob = False
        param = k.rsplit(".", 1)[-1]
        m = re.match(r"^Conv_Body\.(?:conv_body\.)?(res\d\..+)$", k)
        if m:
            blob = _resnet_blob(m.group(1), norm)
        elif k.startswith("Conv_Body."):
            blob = _fpn_blob(k[len("Conv_Body."):], last)
        elif k.startswith("RPN."):
            m = re.match(r"^RPN\.(FPN_)?RPN_(conv|cls_score|bbox_pred)\.(weight|bias)$", k)
            if m:
                base = {"conv": "conv_rpn", "cls_score": "rpn_cls_logits",
                        "bbox_pred": "rpn_bbox_pred"}[m.group(2)]
                level = "_fpn%d" % rpn_min_level if m.group(1) else ""
                blob = "%s%s_%s" % (base, level, _SUFFIX[m.group(3)])
        elif k.startswith("Box_Head."):
            rest = k[len("Box_Head."):]
            m = re.match(r"^(fc1|fc2|fc)\.(weight|bias)$", rest)
            if m:
                blob = {"fc1": "fc6", "fc": "fc6", "fc2": "fc7"}[m.group(1)] + "_" + \
                    _SUFFIX[m.group(2)]
            elif rest.startswith("res5."):
                blob = _resnet_blob(rest, norm)
            else:
                m = re.match(r"^convs\.(\d+)\.(weight|bias)$", rest)
                if m and int(m.group(1)) in box_convs:
                    n, kind = box_convs[int(m.group(1))]
                    blob = ("head_conv%d_%s" % (n, _SUFFIX[param]) if kind == "conv" else
                            "head_conv%d_gn_%s" % (n, _NORM_SUFFIX[param]))
        elif k.startswith("Box_Outs."):
            m = re.match(r"^Box_Outs\.(cls_score|bbox_pred)\.(weight|bias)$", k)
            if m:
                blob = "%s_%s" % (m.group(1), _SUFFIX[m.group(2)])
        elif k.startswith("Mask_Head."):
            rest = k[len("Mask_Head."):]
            if rest.startswith("res5."):
                blob = None       # the box head's res5, shared (saved under both names)
            elif re.match(r"^upconv5?\.(weight|bias)$", rest):
                blob = "conv5_mask_" + _SUFFIX[param]
            else:
                m = re.match(r"^conv_fcn\.(\d+)\.(weight|bias)$", rest)
                if m and int(m.group(1)) in mask_convs:
                    n, kind = mask_convs[int(m.group(1))]
                    if kind == "norm":
                        blob = "_mask_fcn%d_gn_%s" % (n, _NORM_SUFFIX[param])
                    elif mask_gn:
                        blob = "_mask_fcn%d_%s" % (n, _SUFFIX[param])
                    else:
                        blob = "_[mask]_fcn%d_%s" % (n, _SUFFIX[param])
        elif k.startswith("Mask_Outs."):
            m = re.match(r"^Mask_Outs\.classify\.(weight|bias)$", k)
            if m:
                blob = "mask_fcn_logits_" + _SUFFIX[m.group(1)]
        elif k.startswith("Keypoint_Head."):
            m = re.match(r"^Keypoint_Head\.conv_fcn\.(\d+)\.(weight|bias)$", k)
            if m and int(m.group(1)) in kps_convs:
                blob = "conv_fcn%d_%s" % (kps_convs[int(m.group(1))][0], _SUFFIX[m.group(2)])
        elif k.startswith("Keypoint_Outs."):
            if k.startswith("Keypoint_Outs.upsample."):
                blob = None       # fixed bilinear upsampling (Detectron's kps_score)
            else:
                m = re.match(r"^Keypoint_Outs\.classify\.(weight|bias)$", k)
                if m:
                    blob = "kps_score_lowres_" + _SUFFIX[m.group(1)]
        if blob is False:
            unknown.append(k)
        else:
            out[k] = blob
    if unknown:
        raise ValueError("%d key(s) of the Detectron.pytorch checkpoint have no Detectron blob "
                         "name here (a model this converter does not know): %s"
                         % (len(unknown), ", ".join(unknown[:10])))
    return out


def detectron_pytorch_to_blobs(state_dict, rpn_min_level=2):
    """{Detectron blob name: float32 numpy array} from a Detectron.pytorch ``state_dict``
    (``'module.'`` prefixes of a DataParallel are dropped)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    names = detectron_pytorch_blob_names({k: v.shape for k, v in state_dict.items()},
                                         rpn_min_level)
    blobs = {}
    for k, blob in names.items():
        if blob is None:
            continue
        if blob in blobs:
            raise ValueError("two keys of the Detectron.pytorch checkpoint map to blob %s "
                             "(the second is %s)" % (blob, k))
        blobs[blob] = np.ascontiguousarray(state_dict[k].detach().cpu().numpy(),
                                           dtype=np.float32)
    return blobs
