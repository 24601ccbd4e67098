#!/usr/bin/env bash
# On a machine with a CUDA GPU: build pydetectron._C with its CUDA kernels, run the ops tests
# (CUDA tests included), then time the ops against torchvision. Logs go to $OUT (default
# /tmp/gpu_check). Usage: bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== build (FORCE_CUDA=1, arch $TORCH_CUDA_ARCH_LIST)"
rm -f lib/pydetectron/_C*.so
start=$(date +%s)
if ! FORCE_CUDA=1 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
grep -iE "warning|spill" "$OUT/build.log" | grep -v "c10/\|ATen/\|torch/" | head -n 20

echo "== tests"
PYTHONPATH=lib${PYTHONPATH:+:$PYTHONPATH} "$PY" -m pytest tests/ops -q -rfEs -p no:randomly 2>&1 | tee "$OUT/pytest.log" | tail -n 40
test_rc=${PIPESTATUS[0]}

echo "== benchmark"
PYTHONPATH=lib${PYTHONPATH:+:$PYTHONPATH} "$PY" tools/benchmark_ops.py --device cuda --out "$OUT/bench_cuda.json" 2>&1 \
    | tee "$OUT/bench.log"
exit "$test_rc"
