"""Random subsampling helpers (distributions, counts) and the batched +1 overlaps."""
import numpy as np
import pycocotools.mask as COCOmask
import torch

from pydetectron.modeling.targets.overlaps import box_ioa, box_iou
from pydetectron.modeling.targets.sampling import draws_with_replacement, random_subset
from pydetectron.utils.boxes import bbox_overlaps, xyxy_to_xywh


def test_random_subset_counts_membership_and_uniformity():
    g = torch.Generator().manual_seed(0)
    groups = 4000
    pattern = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=torch.bool)  # 10
    mask = pattern.repeat(groups)
    group = torch.arange(groups).repeat_interleave(len(pattern))
    quota = torch.full((groups,), 3, dtype=torch.long)
    quota[:10] = 50                                    # more than the candidates: take all 10
    chosen = random_subset(mask, group, quota, groups, g).view(groups, -1)
    assert not (chosen & ~pattern).any()
    assert (chosen[:10].sum(1) == 10).all() and (chosen[10:].sum(1) == 3).all()
    freq = chosen[10:].float().mean(0)[pattern]
    # each candidate with probability 3 / 10; 3990 draws -> std ~ 0.0073
    assert (freq - 0.3).abs().max() < 0.03
    # an int quota and an empty input
    assert random_subset(mask[:15], group[:15], 2, 1, g).sum() == 2
    assert random_subset(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                         3, 1, g).numel() == 0


def test_draws_with_replacement_match_detectron_distribution():
    g = torch.Generator().manual_seed(1)
    rows, A = 3000, 80
    mask = torch.zeros(rows, A, dtype=torch.bool)
    mask[:, :50] = True                                 # 50 candidates per row
    mask = mask[:, torch.randperm(A, generator=g)]
    num = torch.full((rows,), 20, dtype=torch.long)
    num[0] = 50                                         # not more candidates than draws: all
    num[1] = 0
    chosen = draws_with_replacement(mask, num, 64, g)
    assert not (chosen & ~mask).any()
    assert chosen[0].sum() == 50 and chosen[1].sum() == 0
    distinct = chosen[2:].sum(1).double()
    expected = 50 * (1 - (49. / 50) ** 20)             # 16.62 distinct of 20 draws
    assert abs(distinct.mean().item() - expected) < 0.1
    assert distinct.max() <= 20
    # each candidate equally likely
    hits = chosen[2:].float().sum(0)[mask[0]] / (rows - 2)
    p = 1 - (49. / 50) ** 20                           # 0.332; 2998 rows -> std ~ 0.0086
    assert (hits - p).abs().max() < 0.04


def test_batched_iou_and_ioa_match_numpy_and_pycocotools():
    rng = np.random.RandomState(0)
    a = rng.uniform(0, 50, (3, 20, 2))
    b = rng.uniform(0, 50, (3, 7, 2))
    boxes = np.concatenate([a, a + rng.uniform(0, 30, a.shape)], axis=2).astype(np.float32)
    query = np.concatenate([b, b + rng.uniform(0, 30, b.shape)], axis=2).astype(np.float32)
    boxes[0, 0] = [10, 10, 19, 19]
    query[0, 0] = [20, 10, 29, 19]                    # touching: no shared pixel column
    query[0, 1] = [19, 10, 29, 19]                    # one shared column: 10 of 200 + ...
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(query)).numpy()
    ioa = box_ioa(torch.from_numpy(boxes), torch.from_numpy(query)).numpy()
    assert iou[0, 0, 0] == 0 and abs(iou[0, 0, 1] - 10. / (100 + 110 - 10)) < 1e-7
    for n in range(3):
        np.testing.assert_allclose(iou[n], bbox_overlaps(boxes[n], query[n]), rtol=1e-6,
                                   atol=1e-7)
        ref = COCOmask.iou(xyxy_to_xywh(boxes[n].astype(np.float64)),
                           xyxy_to_xywh(query[n].astype(np.float64)), [1] * 7)
        np.testing.assert_allclose(ioa[n], ref, rtol=1e-5, atol=1e-7)


def test_batched_iou_equals_the_ops_kernel_per_image():
    from pydetectron.ops import box_iou as ops_box_iou
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(2, 50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(2, 50, 2, generator=g) * 60], dim=2)
    q = boxes[:, :9] + torch.randn(2, 9, 4, generator=g) * 5
    q[..., 2:] = torch.maximum(q[..., 2:], q[..., :2])
    iou = box_iou(boxes, q)
    for n in range(2):
        assert torch.allclose(iou[n], ops_box_iou(boxes[n], q[n]), atol=1e-7)
