"""Layers Detectron uses that PyTorch lacks or defines differently.

- ``AffineChannel2d``: frozen batch norm (scale and bias only).
- ``GroupNorm`` / ``get_group_gn``: GroupNorm with Detectron's group count.
- ``BilinearInterpolation2d``: fixed bilinear upsampling (a frozen transposed conv).
- ``init``: Caffe2's XavierFill / MSRAFill / GaussianFill / ConstantFill.
- ``DataParallel``: the dict-aware DataParallel (per-GPU blobs of different sizes, CPU-side roidb).
"""
from pydetectron.nn.affine import AffineChannel2d  # noqa: F401
from pydetectron.nn.group_norm import GroupNorm, get_group_gn  # noqa: F401
from pydetectron.nn.upsample import BilinearInterpolation2d, bilinear_upsample_filter  # noqa: F401
from pydetectron.nn import init  # noqa: F401
from pydetectron.nn.data_parallel import DataParallel  # noqa: F401
