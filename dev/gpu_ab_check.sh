#!/usr/bin/env bash
# On the GPU machine, in one device call: build pydetectron._C with CUDA, give the build to the
# older package copies named in BASES (folders holding a pydetectron package, made here with
# `mkdir -p .bench_base && git archive <commit> lib | tar -x -C .bench_base`, ignored folders
# carried to the GPU machine), then run tools/benchmark_ab.py once per entry of AB (its
# arguments, entries separated by ';'). Logs: $OUT/build.log, $OUT/ab_<i>.log; the paired tables
# are printed.
#   BASES=".bench_base/lib" AB="--impl base=.bench_base/lib --impl head=lib --peer --model mask" \
#       bash tools/gpu_ab_check.sh
# Environment: TESTS=1 (run `pytest tests -m cuda` after the build; log pytest_cuda.log),
# STEPS (rounds per comparison, 50), AB_TIMEOUT (seconds per comparison, 240). pycocotools (the
# torchvision peer's masks need it) comes from the carried .whl/ when missing (tools/gpu_env.sh).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_ab_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# shellcheck source=tools/gpu_env.sh
. tools/gpu_env.sh
ensure_pycocotools || exit 1
T0=$(date +%s)
build_cuda_extension "$OUT/build.log" || exit 1
echo "built in $(( $(date +%s) - T0 )) s"
if [ "${TESTS:-0}" = 1 ]; then   # the CUDA tests first (the machine's own pytest)
    timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest tests -m cuda -q -p no:cacheprovider \
        > "$OUT/pytest_cuda.log" 2>&1
    echo "pytest rc=$? $(tail -n 1 "$OUT/pytest_cuda.log")"
    grep -E "^(FAILED|ERROR)" "$OUT/pytest_cuda.log" | head -n 20
fi
for b in ${BASES:-}; do
    cp lib/pydetectron/_C*.so "$b/pydetectron/" || exit 1
done
IFS=';' read -r -a runs <<< "${AB:?AB: the benchmark_ab.py argument lists, separated by ;}"
i=0
for a in "${runs[@]}"; do
    i=$((i + 1))
    echo "== ab $i: $a"
    # shellcheck disable=SC2086
    timeout "${AB_TIMEOUT:-240}" python3 tools/benchmark_ab.py --steps "${STEPS:-50}" $a \
        > "$OUT/ab_$i.log" 2>&1
    echo "rc=$?"
    grep -E "^worker|^== paired|^impl|^[a-z]+ +[0-9]" "$OUT/ab_$i.log" | grep -v "^worker" \
        || tail -n 20 "$OUT/ab_$i.log"
done
