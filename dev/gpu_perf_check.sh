#!/usr/bin/env bash
# On the GPU machine, in one device call: build pydetectron._C with CUDA, run the CUDA tests
# (tools/gpu_train_check.sh PARTS=tests), then tools/benchmark.py once per variant of VARIANTS,
# each variant a string of benchmark arguments separated by ';' (default: Mask R-CNN training at
# batch 2 and inference, NCHW with torchvision beside it, then channels-last alone).
# Logs go to $OUT (default /tmp/gpu_perf_check): check.log, pytest_cuda.log, bench_<i>.log/.json.
#   VARIANTS="--models mask --batch_sizes 2;--models mask --batch_sizes 2 --channels_last" \
#       bash tools/gpu_perf_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_perf_check}
mkdir -p "$OUT"
COMMON=${COMMON:---parts train,infer --warmup 3 --iters 20 --max_seconds 6 --infer_batch 8}
VARIANTS=${VARIANTS:---models mask --batch_sizes 2 --profile;--models mask --batch_sizes 2 --no-peer --channels_last}
OUT="$OUT" PARTS=${CHECK_PARTS:-tests} BUDGET=${CHECK_BUDGET:-300} bash tools/gpu_train_check.sh \
    > "$OUT/check.log" 2>&1
grep -E "built:|pytest rc|FAILED|ERROR" "$OUT/check.log" | head -n 30
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/site
IFS=';' read -r -a variants <<< "$VARIANTS"
i=0
for v in "${variants[@]}"; do
    i=$((i + 1))
    echo "== variant $i: $v"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-240}" python3 tools/benchmark.py $v $COMMON \
        --json "$OUT/bench_$i.json" > "$OUT/bench_$i.log" 2>&1
    echo "rc=$?"
    grep -E "host-device synchronisations|device time per step|^\s+[0-9]+\s+lib/" "$OUT/bench_$i.log"
    sed -n '/^== training/,$p' "$OUT/bench_$i.log"
done
