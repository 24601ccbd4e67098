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

export PYTHONPATH=lib${PYTHONPATH:+:$PYTHONPATH}
echo "== a C++ argument check must raise, not crash"
THROW='import torch, pydetectron.ops as o
try:
    torch.ops.pydetectron.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
except RuntimeError as e:
    print("raised:", str(e).splitlines()[0])'
if ! "$PY" -X faulthandler -c "$THROW" > "$OUT/throw.log" 2>&1; then
    echo "CRASHED: see throw.log / throw_bt.log"; tail -n 5 "$OUT/throw.log"
    if command -v cuda-gdb > /dev/null; then
        timeout 120 cuda-gdb -batch -ex run -ex bt --args "$PY" -c "$THROW" > "$OUT/throw_bt.log" 2>&1
        grep -E "^#" "$OUT/throw_bt.log" | head -n 25
    fi
else
    cat "$OUT/throw.log"
fi

echo "== tests (one pytest process per file, so that a crash stays in its file)"
test_rc=0
: > "$OUT/pytest.log"
for f in tests/ops/test_*.py; do
    "$PY" -m pytest "$f" -q -rfEs -p no:randomly -p no:cacheprovider >> "$OUT/pytest.log" 2>&1
    rc=$?
    echo "$f: rc=$rc $(tail -n 1 "$OUT/pytest.log")"
    [ $rc -ne 0 ] && test_rc=$rc
done
grep -E "^(FAILED|ERROR)|Fatal|Error" "$OUT/pytest.log" | head -n 30

echo "== benchmark"
"$PY" tools/benchmark_ops.py --device cuda --profile --out "$OUT/bench_cuda.json" 2>&1 \
    | tee "$OUT/bench.log"
exit "$test_rc"
