#!/usr/bin/env bash
# On the GPU machine, in one device call: build pydetectron._C with CUDA, run the CUDA tests
# (tools/gpu_train_check.sh PARTS=tests), then tools/benchmark.py once per variant of VARIANTS,
# each variant a string of benchmark arguments separated by ';' (default: Mask R-CNN training at
# batch 2 and inference, NCHW with torchvision beside it, then channels-last alone).
# Logs go to $OUT (default /tmp/gpu_perf_check): check.log, pytest_cuda.log, bench_<i>.log/.json.
#   VARIANTS="--models mask --batch_sizes 2;--models mask --batch_sizes 2 --channels_last" \
#       bash tools/gpu_perf_check.sh
#
# Before/after in one call (the lent VM's CPU is shared, so numbers of different calls differ by
# +-15%): BASE=<dir> names a copy of an older lib/ (e.g. made here with
# `mkdir -p .bench_base && git archive <commit> lib | tar -x -C .bench_base`, an ignored folder
# carried to the GPU machine). Each variant then runs ROUNDS times (default 2) alternately on
# that copy and on this tree (base first), logs bench_<i>_<base|head>_<round>.log/.json, and a
# table of the medians per round closes the output. The copy uses this tree's freshly built
# pydetectron._C (it must not need ops that this tree lacks). A variant written "head:<args>"
# runs once, on this tree only.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_perf_check}
mkdir -p "$OUT"
COMMON=${COMMON:---parts train,infer --warmup 3 --iters 20 --max_seconds 6 --infer_batch 8}
VARIANTS=${VARIANTS:---models mask --batch_sizes 2 --profile;--models mask --batch_sizes 2 --no-peer --channels_last}
BASE=${BASE:-}
ROUNDS=${ROUNDS:-2}
OUT="$OUT" PARTS=${CHECK_PARTS:-tests} BUDGET=${CHECK_BUDGET:-300} bash tools/gpu_train_check.sh \
    > "$OUT/check.log" 2>&1
grep -E "built:|pytest rc|FAILED|ERROR" "$OUT/check.log" | head -n 30
HEAD_LIB=$PWD/lib
EXTRA_PATH=""
[ -d /tmp/site ] && EXTRA_PATH=:/tmp/site
if [ -n "$BASE" ]; then
    BASE=$(cd "$BASE" && pwd)
    cp lib/pydetectron/_C*.so "$BASE/pydetectron/" || { echo "no built _C to give $BASE"; exit 1; }
fi

bench() {  # bench <lib dir> <log stem> <benchmark arguments...>
    local lib=$1 stem=$2
    shift 2
    echo "== $stem ($lib): $*"
    PYDETECTRON_LIB=$lib PYTHONPATH=$lib$EXTRA_PATH timeout "${BENCH_TIMEOUT:-240}" python3 tools/benchmark.py "$@" \
        --json "$OUT/$stem.json" > "$OUT/$stem.log" 2>&1
    echo "rc=$?"
    grep -E "host-device synchronisations|device time per step|^\s+[0-9]+\s+lib/" "$OUT/$stem.log"
    sed -n '/^== training/,$p' "$OUT/$stem.log"
}

IFS=';' read -r -a variants <<< "$VARIANTS"
i=0
for v in "${variants[@]}"; do
    i=$((i + 1))
    echo "== variant $i: $v"
    if [ -z "$BASE" ] || [ "${v#head:}" != "$v" ]; then
        v=${v#head:}
        # shellcheck disable=SC2086
        bench "$HEAD_LIB" "bench_$i" $v $COMMON
        continue
    fi
    for r in $(seq 1 "$ROUNDS"); do
        # shellcheck disable=SC2086
        bench "$BASE" "bench_${i}_base_$r" $v $COMMON
        # shellcheck disable=SC2086
        bench "$HEAD_LIB" "bench_${i}_head_$r" $v $COMMON
    done
done
if [ -n "$BASE" ]; then
    python3 - "$OUT" <<'PY'
import glob, json, os, re, sys
rows = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], 'bench_*_*_*.json'))):
    i, which, r = re.match(r'bench_(\d+)_(base|head)_(\d+)\.json', os.path.basename(path)).groups()
    for rec in json.load(open(path))['results']:
        if rec.get('status') != 'ok':
            continue
        if rec['part'] == 'train':
            key = (i, 'train %s %s %s batch %d' % (rec['model'], rec['impl'], rec['precision'],
                                                 rec['batch']), 'images/s')
            val = rec['images_per_s']
        elif rec['part'] == 'infer':
            for name, val, unit in (('batch 1', rec['batch1_ms'], 'ms'),
                                    ('batch %d' % rec['batch'], rec['batchN_images_per_s'],
                                     'images/s')):
                rows.setdefault((i, 'infer %s %s %s' % (rec['model'], rec['impl'], name), unit),
                                {}).setdefault(which, []).append(val)
            continue
        else:
            continue
        rows.setdefault(key, {}).setdefault(which, []).append(val)
print('\n== before (BASE) / after (this tree), per round')
for (i, what, unit), d in sorted(rows.items()):
    fmt = lambda xs: ' '.join('%.1f' % x for x in xs)  # noqa: E731
    print('variant %s  %-45s %-8s base: %-20s head: %s' % (i, what, unit, fmt(d.get('base', [])),
                                                          fmt(d.get('head', []))))
PY
fi
