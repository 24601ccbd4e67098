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
# STEPS (rounds per comparison, 50), AB_TIMEOUT (seconds per comparison, 240),
# PYCOCOTOOLS_WHEEL_DIR (default .whl: pycocotools is installed from there when missing; the
# torchvision peer's masks need it).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_ab_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import pycocotools" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pcc \
        "${PYCOCOTOOLS_WHEEL_DIR:-.whl}"/pycocotools-*.whl && export PYTHONPATH=/tmp/pcc
fi
rm -f lib/pydetectron/_C*.so
T0=$(date +%s)
if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1 \
        python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log"
    exit 1
fi
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
