"""dev/count_recompiles.py on the CPU, its shapes only (no model): the blob shapes of real
training batches, and --one-batch's single shape (the fixed-size reference)."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import count_recompiles  # noqa: E402


@pytest.mark.parametrize('one_batch', [False, True])
def test_one_batch_trains_every_step_on_one_blob_shape(registry_env, fresh_cfg, coco_mini,
                                                       tmp_path, one_batch):
    out = tmp_path / 'r.json'
    argv = ['--device', 'cpu', '--shapes-only', '--steps', '12', '--scale', '320',
            '--max-size', '533', '--nw', '0', '--data', coco_mini, '--compile', 'off',
            '--json', str(out)] + (['--one-batch'] if one_batch else [])
    count_recompiles.main(argv)
    rec = json.loads(out.read_text())
    assert rec['one_batch'] is one_batch and rec['steps'] == 12
    counts = [int(s.rsplit(':', 1)[1]) for s in rec['blob_shapes']]
    assert sum(counts) == 12
    if one_batch:
        assert rec['distinct_blob_shapes'] == 1
    else:        # coco_mini's photos of several aspect ratios: several shapes in 12 batches
        assert rec['distinct_blob_shapes'] > 1
