"""Parts of a model looked up by the function names of Detectron's config.

Detectron names the parts of a model with strings (``MODEL.CONV_BODY: FPN.add_fpn_ResNet50_conv5_body``)
resolved by ``get_func``. Here each family of parts has a registry keyed by the canonical name
(``FPN.fpn_ResNet50_conv5_body``; ``pydetectron.core.config.canonical_func_name`` maps Detectron's
``add_`` / ``head_builder.`` spellings to it). An unknown name raises an error listing the valid ones.

The call contract of each family (builders read the global ``cfg`` for their options):

    CONV_BODY            builder() -> module with ``dim_out`` (int) and ``spatial_scale``
                         (float, or a list finest level first for FPN bodies);
                         forward(data (N, 3, H, W)) -> tensor or list of tensors (finest first)
    ROI_BOX_HEAD         builder(dim_in, spatial_scale) -> module with ``dim_out``;
                         forward(blob_conv, rois (R, 5)) -> (R, dim_out) or (R, dim_out, 1, 1)
    ROI_MASK_HEAD        builder(dim_in, spatial_scale) -> module with ``dim_out``;
    ROI_KEYPOINTS_HEAD   forward(blob_conv, rois (R, 5)) -> (R, dim_out, S, S)
"""

__all__ = ["Registry", "UnknownFunctionError", "CONV_BODY", "ROI_BOX_HEAD", "ROI_MASK_HEAD",
           "ROI_KEYPOINTS_HEAD", "get_func"]

from pydetectron.utils.errors import ConfigError


def _canonical(name):
    try:
        from pydetectron.core.config import canonical_func_name
    except ImportError:  # pragma: no cover - config is part of the package
        return name
    return canonical_func_name(name)


class UnknownFunctionError(ConfigError, KeyError):
    """A config key names a body / head function that no registry holds (a user error: tools
    report it without a traceback)."""


class Registry:
    """Name -> builder for one family of model parts (the family's config key names it)."""

    def __init__(self, config_key):
        self.config_key = config_key
        self._builders = {}

    def register(self, name):
        """Decorator registering a builder under its canonical ``module.function`` name."""
        def wrap(builder):
            if name in self._builders:
                raise KeyError("%s: %r registered twice" % (self.config_key, name))
            self._builders[name] = builder
            return builder
        return wrap

    def names(self):
        _import_parts()
        return sorted(self._builders)

    def get(self, name):
        """The builder for ``name`` (Detectron spellings accepted); KeyError listing valid names."""
        _import_parts()
        canonical = _canonical(name)
        if canonical in self._builders:
            return self._builders[canonical]
        raise UnknownFunctionError("%s: unknown function %r; valid names are: %s"
                       % (self.config_key, name, ", ".join(sorted(self._builders))))

    def __contains__(self, name):
        _import_parts()
        return _canonical(name) in self._builders


CONV_BODY = Registry("MODEL.CONV_BODY")
ROI_BOX_HEAD = Registry("FAST_RCNN.ROI_BOX_HEAD")
ROI_MASK_HEAD = Registry("MRCNN.ROI_MASK_HEAD")
ROI_KEYPOINTS_HEAD = Registry("KRCNN.ROI_KEYPOINTS_HEAD")


def _import_parts():
    # The modules register their parts when imported; import them all before any lookup.
    from pydetectron.modeling import (  # noqa: F401
        FPN, ResNet, fast_rcnn_heads, keypoint_rcnn_heads, mask_rcnn_heads)


def get_func(config_key, name):
    """Builder registered for ``name`` under ``config_key`` (e.g. 'MODEL.CONV_BODY')."""
    registries = {r.config_key: r for r in (CONV_BODY, ROI_BOX_HEAD, ROI_MASK_HEAD,
                                            ROI_KEYPOINTS_HEAD)}
    if config_key not in registries:
        raise KeyError("no registry for config key %r; expected one of %s"
                       % (config_key, ", ".join(sorted(registries))))
    return registries[config_key].get(name)
