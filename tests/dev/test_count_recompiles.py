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


def test_one_batch_of_a_given_shape(registry_env, fresh_cfg, coco_mini, tmp_path, capsys):
    """--one-batch HxW: every step on the first batch whose blob is H x W (one of the real
    shapes); a bad HxW is the parser's one-line error (exit 2)."""
    def run(*more):
        out = tmp_path / 'r.json'
        count_recompiles.main(['--device', 'cpu', '--shapes-only', '--steps', '12', '--scale',
                               '320', '--max-size', '533', '--nw', '0', '--data', coco_mini,
                               '--compile', 'off', '--json', str(out)] + list(more))
        return json.loads(out.read_text())
    real = run()
    shapes = [s.rsplit(':', 1)[0] for s in real['blob_shapes']]
    # the shape the first batch does not have: a later batch is looked for
    first = run('--one-batch')['blob_shapes'][0].rsplit(':', 1)[0]
    wanted = [s for s in shapes if s != first][0]
    rec = run('--one-batch', wanted)
    assert rec['one_batch'] == wanted and rec['blob_shapes'] == ['%s:12' % wanted]
    for bad in ('800', '800x', '0x320', 'axb'):
        with pytest.raises(SystemExit) as e:
            count_recompiles.parse_args(['--one-batch', bad])
        assert e.value.code == 2
        assert '--one-batch' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='no batch of that blob shape'):
        run('--one-batch', '32x32')
