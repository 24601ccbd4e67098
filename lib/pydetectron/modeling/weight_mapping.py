"""Build ``detectron_weight_mapping()`` tables: PyTorch parameter names -> Detectron blob names.

Every module of ``pydetectron.modeling`` that owns parameters answers ``detectron_weight_mapping()``
with ``(mapping, orphans)``: ``mapping`` sends each name of its state dict (parameters and
persistent buffers) to the Caffe2 blob that holds it in a Detectron ``*.pkl``; ``orphans`` lists
blobs that Detectron files carry for this part but that have no counterpart here (e.g. the ImageNet
classifier). The Caffe2 suffixes are fixed by the layer kind:

    conv / fc / transposed conv    <blob>_w, <blob>_b
    AffineChannel (frozen BN)      <blob>_s, <blob>_b      (<blob> ends in "_bn")
    GroupNorm                      <blob>_s, <blob>_b      (<blob> ends in "_gn")
"""
from torch import nn

from pydetectron.nn.affine import AffineChannel2d
from pydetectron.nn.upsample import BilinearInterpolation2d

__all__ = ["layer_blob_names", "blob_mapping", "merge_mappings"]

_SCALE_BIAS = (AffineChannel2d, nn.GroupNorm)
_WEIGHT_BIAS = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d, BilinearInterpolation2d)


def layer_blob_names(layer, blob):
    """{local tensor name: blob name} for one layer whose Detectron blob prefix is ``blob``."""
    if isinstance(layer, _SCALE_BIAS):
        return {"weight": blob + "_s", "bias": blob + "_b"}
    if isinstance(layer, _WEIGHT_BIAS):
        names = {"weight": blob + "_w"}
        if getattr(layer, "bias", None) is not None:
            names["bias"] = blob + "_b"
        return names
    raise TypeError("no Detectron blob naming for a %s (blob %r)" % (type(layer).__name__, blob))


def blob_mapping(module, layer_blobs):
    """Mapping for ``module`` from ``layer_blobs`` = {attribute path of a layer: blob prefix}.

    A layer given as None (an optional layer that is absent) is skipped.
    """
    mapping = {}
    for path, blob in layer_blobs.items():
        layer = module.get_submodule(path)
        for local, name in layer_blob_names(layer, blob).items():
            mapping[path + "." + local] = name
    return mapping


def merge_mappings(parts):
    """Merge the mappings of named children: ``parts`` = {attribute name: child module or None}.

    Returns ``(mapping, orphans)`` with each child's names prefixed by its attribute name.
    """
    mapping, orphans = {}, []
    for name, child in parts.items():
        if child is None:
            continue
        child_map, child_orphans = child.detectron_weight_mapping()
        for k, v in child_map.items():
            mapping[name + "." + k] = v
        orphans.extend(o for o in child_orphans if o not in orphans)
    return mapping, orphans
