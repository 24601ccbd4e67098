"""ops.rle_from_changes against pycocotools' mask.encode of the masks themselves."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from pydetectron.ops import rle_from_changes
from ops_test_utils import needs_ext

pytestmark = needs_ext


def changes_of(binary, dtype):
    """(first pixels, (mask, p) change rows) of (D, H, W) masks flattened column-major."""
    d, h, w = binary.shape
    flat = torch.from_numpy(binary).transpose(1, 2).reshape(d, h * w)
    return flat[:, 0].contiguous(), torch.nonzero(flat[:, 1:] != flat[:, :-1]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_equals_pycocotools_encode(dtype):
    # sparse to dense, all-zero and all-one masks, single pixels, long runs (counts over 2^5,
    # 2^10, 2^15 characters' worth) and runs shorter than the one two before (negative
    # differences)
    rng = np.random.RandomState(0)
    for trial in range(300):
        d, h, w = rng.randint(1, 6), rng.randint(1, 60), rng.randint(1, 60)
        if trial % 10 == 0:
            h, w = 700, 900
        binary = rng.rand(d, h, w) > rng.rand()
        if trial % 10 == 0:
            binary[:] = False
            binary[:, 100:500, 200:700] = True
            binary[0, 300, 300] = False
        if trial % 7 == 0:
            binary[rng.randint(d)] = False
        if trial % 11 == 0:
            binary[rng.randint(d)] = True
        first, changes = changes_of(binary, dtype)
        got = rle_from_changes(first, changes, h, w)
        want = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
        assert got == [r["counts"] for r in want], trial


def test_bad_rows_raise():
    binary = np.zeros((2, 4, 4), bool)
    binary[0, 1:3, 1:3] = True
    binary[1, 0, 0] = True
    first, changes = changes_of(binary, torch.int64)
    assert len(rle_from_changes(first, changes, 4, 4)) == 2
    with pytest.raises(RuntimeError, match="not one of the 2 masks in order"):
        rle_from_changes(first, changes.flip(0), 4, 4)     # masks out of order
    bad = changes.clone()
    bad[[0, 1]] = bad[[1, 0]]           # two positions of mask 0 out of order
    with pytest.raises(RuntimeError, match="out of order or outside"):
        rle_from_changes(first, bad, 4, 4)
    bad = changes.clone()
    bad[0, 1] = 15                      # the last pixel has no successor
    with pytest.raises(RuntimeError, match="out of order or outside"):
        rle_from_changes(first, bad, 4, 4)
    bad = changes.clone()
    bad[-1, 0] = 5                      # no mask 5
    with pytest.raises(RuntimeError, match="not one of the 2 masks"):
        rle_from_changes(first, bad, 4, 4)
    with pytest.raises(RuntimeError, match="`changes` must be a"):
        rle_from_changes(first, changes.float(), 4, 4)
    with pytest.raises(ValueError, match="`width` must be an int >= 1"):
        rle_from_changes(first, changes, 4, 0)
    assert rle_from_changes(torch.zeros(0, dtype=torch.bool),
                            torch.zeros(0, 2, dtype=torch.int64), 3, 3) == []
