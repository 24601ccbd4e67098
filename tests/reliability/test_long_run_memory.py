"""Issue 4, item 4 (short version of ``dev/soak_train.py``'s 300-step run, whose figure is in
BENCHMARK.md): after warm-up, the resident memory of training (main process plus a DataLoader
worker) stays flat. A per-step leak of a batch, a loss graph or an image would add megabytes per
step; the bound catches a leak of about 1 MiB per step and allows allocator noise."""
import json
import os
import subprocess
import sys

from conftest import ROOT

GROWTH_BOUND_MIB = 16.0     # observed: 3-9 MiB over steps 15-40 (allocator still settling)


def test_rss_is_flat_after_warmup(tmp_path):
    out = tmp_path / 'soak.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'dev', 'soak_train.py'),
                           '--steps', '40', '--warmup', '15', '--scale', '64', '--nw', '1',
                           '--json', str(out)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    summary, series = result['summary'], result['rss_mib']
    assert summary['steps'] == 40 and len(series) == 40
    assert series[-1] > 100          # the measurement sees the training process at all
    assert summary['growth_after_warmup_mib'] < GROWTH_BOUND_MIB, summary
    assert max(series[15:]) - min(series[15:]) < 2 * GROWTH_BOUND_MIB, series
