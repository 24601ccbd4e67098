"""The FPN RoI feature transform: RoIs assigned to pyramid levels by Detectron's rule and each
pooled from its level, results in the RoIs' input order, so heads call one function.

Level rule (Detectron ``modeling/FPN.py`` ``map_rois_to_fpn_levels``, Eqn. (1) of the FPN paper):

    s = sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
    level = clamp(floor(canonical_level + log2(s / canonical_scale + 1e-6)), k_min, k_max)

computed in the RoIs' dtype (float32 as in Detectron).

Feature order: ``features`` and ``spatial_scales`` list the levels **coarsest first** (level k_max
first, level k_min last), the order Detectron's and Detectron.pytorch's FPN bodies return them in
(``blobs_in[k_max - lvl]``), so a body's output is passed as it comes (trimmed to the RoI levels).
"""
import torch

from pydetectron.ops.roi_align import roi_align
from pydetectron.ops.roi_align_fpn import MAX_LEVELS, roi_align_fpn
from pydetectron.ops.roi_crop import roi_crop
from pydetectron.ops.roi_pool import roi_pool

_METHODS = ("RoIAlign", "RoIPoolF", "RoICrop")


def map_rois_to_fpn_levels(rois, k_min, k_max, canonical_scale=224, canonical_level=4):
    """Target FPN level (int64, in [k_min, k_max]) of each RoI.

    ``rois`` is (K, 5) = (batch_index, x1, y1, x2, y2) or (K, 4) boxes. A degenerate box of
    negative area (which Detectron's ``boxes_area`` asserts against) is sent to ``k_min``.
    """
    if rois.dim() != 2 or rois.size(1) not in (4, 5):
        raise ValueError("map_rois_to_fpn_levels: `rois` must have shape (K, 5) or (K, 4), got %s"
                         % (tuple(rois.shape),))
    if k_min > k_max:
        raise ValueError("map_rois_to_fpn_levels: `k_min` (%d) must be <= `k_max` (%d)"
                         % (k_min, k_max))
    boxes = rois[:, 1:5] if rois.size(1) == 5 else rois
    area = (boxes[:, 2:4] - boxes[:, 0:2] + 1).prod(1)                   # (K,): w * h
    lvls = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale + 1e-6))
    lvls = torch.nan_to_num(lvls, nan=float(k_min))
    return lvls.clamp(k_min, k_max).to(torch.int64)


def fpn_roi_transform(features, rois, output_size, spatial_scales, sampling_ratio=0,
                      method="RoIAlign", k_min=2, k_max=5, canonical_scale=224,
                      canonical_level=4, aligned=False, crop_max_pool=True):
    """Pool ``rois`` (K, 5) from the FPN level each belongs to -> (K, C, PH, PW), in input order.

    ``features``: list of (N, C, H_l, W_l) maps for levels k_max, k_max - 1, ..., k_min (coarsest
    first); ``spatial_scales``: their scales in the same order (e.g. [1/32, 1/16, 1/8, 1/4]).
    ``method``: ``'RoIAlign'`` (uses ``sampling_ratio`` and ``aligned``), ``'RoIPoolF'`` or
    ``'RoICrop'`` (uses ``crop_max_pool``), Detectron.pytorch's ``ROI_XFORM_METHOD`` names.

    ``'RoIAlign'`` over 2 to 8 levels runs :func:`roi_align_fpn`: one op pools every RoI from its
    level (the same values as one ``roi_align`` per level) with no host synchronisation.
    ``'RoIPoolF'`` and ``'RoICrop'`` split the RoIs by level, one transform per level, which costs
    one host synchronisation (reading the per-level RoI counts), the same split Detectron does on
    the host when it builds its ``rois_fpn<l>`` blobs.
    """
    num_levels = k_max - k_min + 1
    if method not in _METHODS:
        raise ValueError("fpn_roi_transform: unknown `method` %r; expected one of %s"
                         % (method, _METHODS))
    if len(features) != num_levels or len(spatial_scales) != num_levels:
        raise ValueError(
            "fpn_roi_transform: levels %d..%d need %d feature maps and %d spatial scales "
            "(coarsest first), got %d and %d" % (k_min, k_max, num_levels, num_levels,
                                                 len(features), len(spatial_scales)))
    if any(a >= b for a, b in zip(spatial_scales, spatial_scales[1:])):
        raise ValueError("fpn_roi_transform: `spatial_scales` must increase (coarsest level "
                         "first, as the FPN body returns them), got %s" % (list(spatial_scales),))

    def transform(feat, level_rois, scale):
        if method == "RoIAlign":
            return roi_align(feat, level_rois, output_size, scale, sampling_ratio, aligned)
        if method == "RoIPoolF":
            return roi_pool(feat, level_rois, output_size, scale)
        return roi_crop(feat, level_rois, output_size, scale, max_pool=crop_max_pool)

    if num_levels == 1:
        return transform(features[0], rois, spatial_scales[0])

    levels = map_rois_to_fpn_levels(rois, k_min, k_max, canonical_scale, canonical_level)  # (K,)
    if method == "RoIAlign" and num_levels <= MAX_LEVELS:
        # features are coarsest first: level lvl is features[k_max - lvl]
        return roi_align_fpn(features, rois, k_max - levels, output_size, spatial_scales,
                             sampling_ratio, aligned)
    order = torch.argsort(levels, stable=True)            # RoIs grouped by level, input order kept
    counts = torch.bincount(levels - k_min, minlength=num_levels).tolist()  # the one host sync
    sorted_rois = rois[order]
    outputs = []
    start = 0
    for i, count in enumerate(counts):
        if count == 0:
            continue
        lvl = k_min + i
        idx = k_max - lvl  # features are coarsest first
        outputs.append(transform(features[idx], sorted_rois[start:start + count],
                                 spatial_scales[idx]))
        start += count
    if not outputs:  # no RoIs at all
        return transform(features[-1], rois, spatial_scales[-1])
    pooled = torch.cat(outputs, dim=0)                     # (K, C, PH, PW) in level order
    restore = torch.empty_like(order)
    restore[order] = torch.arange(order.numel(), device=order.device)
    return pooled[restore]
