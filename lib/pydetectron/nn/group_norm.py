"""GroupNorm as Detectron configures it (``GROUP_NORM.DIM_PER_GP`` / ``NUM_GROUPS`` / ``EPSILON``).

Detectron's SpatialGN computes what ``torch.nn.GroupNorm`` computes (per-group mean and biased
variance over C/G x H x W, then a per-channel scale ``_gn_s`` and bias ``_gn_b``), so the module is
PyTorch's; only the choice of the number of groups is Detectron's (``utils/net.py:get_group_gn``).
"""
import logging

from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["get_group_gn", "GroupNorm"]


def get_group_gn(dim, dim_per_gp=-1, num_groups=32):
    """Number of GroupNorm groups for ``dim`` channels: dim / dim_per_gp, or num_groups.

    Exactly one of ``dim_per_gp`` and ``num_groups`` may be positive (the other -1), as in
    Detectron's ``GROUP_NORM`` config.
    """
    if not (dim_per_gp == -1 or num_groups == -1):
        raise ValueError("GroupNorm: set either GROUP_NORM.DIM_PER_GP (%r) or GROUP_NORM.NUM_GROUPS "
                         "(%r), the other must be -1" % (dim_per_gp, num_groups))
    if dim_per_gp > 0:
        if dim % dim_per_gp != 0:
            raise ValueError("GroupNorm: %d channels are not divisible by GROUP_NORM.DIM_PER_GP=%d"
                             % (dim, dim_per_gp))
        group_gn = dim // dim_per_gp
    else:
        if num_groups <= 0 or dim % num_groups != 0:
            raise ValueError("GroupNorm: %d channels are not divisible by GROUP_NORM.NUM_GROUPS=%d"
                             % (dim, num_groups))
        group_gn = num_groups
    if group_gn < 1:  # Detectron resets to 1 with a warning
        logger.warning("GroupNorm over %d channels: %d groups < 1; using 1", dim, group_gn)
        group_gn = 1
    return group_gn


def GroupNorm(dim, dim_per_gp=-1, num_groups=32, eps=1e-5):
    """A ``torch.nn.GroupNorm`` over ``dim`` channels with Detectron's group count and epsilon.

    Its ``weight`` / ``bias`` are Detectron's ``<prefix>_gn_s`` / ``<prefix>_gn_b`` (init 1 / 0).
    """
    return nn.GroupNorm(get_group_gn(dim, dim_per_gp, num_groups), dim, eps=eps, affine=True)
