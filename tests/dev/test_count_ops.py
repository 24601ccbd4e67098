"""dev/count_ops.py on the CPU: one training step's ATen operators, attributed to the package's
source files."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import count_ops  # noqa: E402


@pytest.mark.slow
def test_count_ops_attributes_a_steps_operators_to_source_files(registry_env, capsys):
    count_ops.main(['--image_size', '64x96', '--lines', '3'])
    out = capsys.readouterr().out.splitlines()
    total = int(out[0].split(': ')[1].split()[0])
    rows = [line.split(None, 1) for line in out[1:out.index('-- the 3 busiest lines')]]
    per_file = {name: int(n) for n, name in rows}
    assert sum(per_file.values()) == total > 1000
    # the proposals and the targets issue operators; backward and the optimizer do too
    assert per_file['lib/pydetectron/modeling/generate_proposals.py'] > 0
    assert per_file['lib/pydetectron/modeling/targets/mask_rcnn.py'] > 0
    # the mask targets' polygon rasterization: one operator (ops.polygon_masks_in_boxes) with the
    # compiled extension, else the pure-torch path of targets/rasterize.py
    from pydetectron.ops import extension_available
    if extension_available():
        assert per_file['lib/pydetectron/ops/polygon_mask.py'] == 1
        assert 'lib/pydetectron/modeling/targets/rasterize.py' not in per_file
    else:
        assert per_file['lib/pydetectron/modeling/targets/rasterize.py'] > 0
    assert per_file['backward / optimizer'] > 0
