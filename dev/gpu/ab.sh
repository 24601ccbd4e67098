# Mode "ab" of dev/gpu_check.sh: give the build to the older package copies named in BASES
# (folders holding a pydetectron package, made here with
# `mkdir -p .bench_base && git archive <commit> lib | tar -x -C .bench_base`, ignored folders
# carried to the GPU machine), then run dev/benchmark_ab.py once per entry of AB (its arguments,
# entries separated by ';'). Logs: $OUT/ab_<i>.log; the paired tables are printed.
#   BASES=".bench_base/lib" AB="--impl base=.bench_base/lib --impl head=lib --peer --model mask" \
#       bash dev/gpu_check.sh ab
# Environment: AB (required, except on CPU=1, whose default is a tiny paired inference run of
# this checkout against itself), BASES, AB_STEPS (rounds per comparison, 50), AB_TIMEOUT
# (seconds per comparison, 240). pycocotools (the torchvision peer's masks need it) comes from
# the shared set-up.
if [ "$CPU" = 1 ]; then
    AB=${AB:---impl head=lib --impl again=lib --device cpu --model faster --part infer --image_size 64x96 --objects 2 --warmup 1 --set TEST.RPN_PRE_NMS_TOP_N 50 TEST.RPN_POST_NMS_TOP_N 20 TEST.DETECTIONS_PER_IM 5}
    AB_STEPS=${AB_STEPS:-3}
fi
if [ -z "${AB:-}" ]; then echo "ab: set AB to the benchmark_ab.py argument lists, separated by ;"; exit 2; fi
for b in ${BASES:-}; do
    cp lib/pydetectron/_C*.so "$b/pydetectron/" || exit 1
done
ab_one() {   # $1 index, $2 benchmark_ab.py arguments
    echo "== ab $1: $2"
    # shellcheck disable=SC2086
    timeout "${AB_TIMEOUT:-240}" "$PY" dev/benchmark_ab.py --steps "${AB_STEPS:-50}" $2 \
        > "$OUT/ab_$1.log" 2>&1
    local rc=$?
    echo "rc=$rc"
    grep -E "^== paired|^impl|^[a-z]+ +[0-9]" "$OUT/ab_$1.log" || tail -n 20 "$OUT/ab_$1.log"
    return $rc
}
for_each_entry "$AB" ab_one
