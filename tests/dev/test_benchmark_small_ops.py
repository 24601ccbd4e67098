"""dev/benchmark_small_ops.py runs and prints one timing line per case."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_prints_each_case():
    out = subprocess.run([sys.executable, 'dev/benchmark_small_ops.py', '--calls', '3',
                          '--threads', '1'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if 'median' in line]
    assert len(lines) == 3 and all(line.split()[-1] == 'ms' for line in lines), out.stdout
