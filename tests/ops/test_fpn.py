"""FPN level assignment (Detectron's rule) and the multi-level RoI transform."""
import pytest
import torch

from pydetectron.ops import fpn_roi_transform, map_rois_to_fpn_levels, roi_align, roi_pool
from ops_test_utils import cuda_kernels_available, needs_ext, random_rois


def test_levels_by_hand():
    # sqrt(area) with +1 widths: 224 -> level 4; 112 -> 3; 111 -> 2 (log2(111/224) < -1);
    # 448 -> 5; 10 -> clamped to 2; 2000 -> clamped to 5.
    sides = [224, 112, 111, 448, 10, 2000, 223.9]
    rois = torch.tensor([[0, 0, 0, s - 1, s - 1] for s in sides], dtype=torch.float32)
    assert map_rois_to_fpn_levels(rois, 2, 5).tolist() == [4, 3, 2, 5, 2, 5, 3]
    assert map_rois_to_fpn_levels(rois[:, 1:], 2, 5).tolist() == [4, 3, 2, 5, 2, 5, 3]
    assert map_rois_to_fpn_levels(rois, 2, 5, canonical_scale=112).tolist()[:2] == [5, 4]
    degenerate = torch.tensor([[0, 10, 10, 5, 0.0]])  # negative area
    assert map_rois_to_fpn_levels(degenerate, 2, 5).tolist() == [2]


def _pyramid(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scales = [1 / 32, 1 / 16, 1 / 8, 1 / 4]  # coarsest first
    feats = [torch.randn(2, 3, int(256 * s), int(320 * s), generator=g, dtype=dtype)
             for s in scales]
    rois = random_rois(40, 2, 64, 80, 0.25, g, dtype=dtype, min_size=40.0, max_size=900.0)
    return feats, scales, rois


@needs_ext
@pytest.mark.parametrize("method", ["RoIAlign", "RoIPoolF", "RoICrop"])
def test_transform_equals_per_level_calls_in_input_order(method):
    feats, scales, rois = _pyramid(seed=1)
    for f in feats:
        f.requires_grad_(True)
    out = fpn_roi_transform(feats, rois, 7, scales, 2, method=method)
    levels = map_rois_to_fpn_levels(rois, 2, 5)
    assert len(set(levels.tolist())) >= 3  # the case spreads over the pyramid
    for k in range(rois.shape[0]):
        i = 5 - int(levels[k])
        if method == "RoIAlign":
            exp = roi_align(feats[i], rois[k:k + 1], 7, scales[i], 2)
        elif method == "RoIPoolF":
            exp = roi_pool(feats[i], rois[k:k + 1], 7, scales[i])
        else:
            continue
        torch.testing.assert_close(out[k:k + 1], exp, rtol=0, atol=0)
    out.sum().backward()
    assert all(f.grad is not None for f in feats)


@needs_ext
def test_transform_argument_checks_and_empty():
    feats, scales, rois = _pyramid(seed=2)
    with pytest.raises(ValueError, match="coarsest level first"):
        fpn_roi_transform(feats[::-1], rois, 7, scales[::-1], 2)
    with pytest.raises(ValueError, match="need 4 feature maps"):
        fpn_roi_transform(feats[:3], rois, 7, scales[:3], 2)
    with pytest.raises(ValueError, match="unknown `method`"):
        fpn_roi_transform(feats, rois, 7, scales, 2, method="RoIWarp")
    assert fpn_roi_transform(feats, rois[:0], 7, scales, 2).shape == (0, 3, 7, 7)


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_kernels_available(), reason="needs the CUDA build")
def test_cuda_matches_cpu():
    feats, scales, rois = _pyramid(seed=3, dtype=torch.float32)
    out_c = fpn_roi_transform(feats, rois, 7, scales, 2)
    out_g = fpn_roi_transform([f.cuda() for f in feats], rois.cuda(), 7, scales, 2)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-5, atol=1e-5)
