# Mode "testnet" of dev/gpu_check.sh: dev/benchmark_test_net.py -- test_net's own path (reading,
# network, NMS, mask pasting, RLE, detections.pkl) on coco_mini val2017 photos at 800 / 1333 with
# 100 detections per image, paired in turns with torchvision's evaluation loop; then, for each
# older package copy named in BASES (see ab.sh), the same path of that copy against this one;
# then ours alone with each entry of TESTNET_VARIANTS (benchmark_test_net.py arguments, entries
# separated by ';', e.g. "--cudnn-benchmark;--channels_last"); then, with PYSPY=1, one pass of
# ours sampled by py-spy (the carried .whl/py-spy; collapsed stacks, idle time included, in
# $OUT/testnet_pyspy.txt); then, with COMPARE=1, dev/compare_device_host.py on the first 20
# photos (the device post-processing against Detectron's host path; $OUT/compare.json); then,
# for each entry of PROFILE (benchmark_test_net.py arguments, ';'-separated; "-" for none),
# dev/profile_test_net.py: one pass under torch.profiler, its stages labelled
# ($OUT/profile_<i>/summary.json, ops.txt, trace.json.gz).
# Logs: $OUT/testnet*.log and .json. Environment: TESTNET_ROUNDS (3), TESTNET_TIMEOUT (s, 400),
# TESTNET_ARGS (more arguments for every run).
# CPU=1: 3 images at scale 200, one round; the torchvision half only with PYDETECTRON_TV_SHIM=1
# (and PYTHONPATH holding a torchvision: dev/tv_cpu_shim.py's stand-in ops, no numbers).
ROUNDS=${TESTNET_ROUNDS:-3}
DEV=cuda
IMPL=ours,torchvision
SMALL=
if [ "$CPU" = 1 ]; then
    DEV=cpu
    ROUNDS=${TESTNET_ROUNDS:-1}
    SMALL="--scale 200 --max-size 333 --max-images 3"
    [ "${PYDETECTRON_TV_SHIM:-0}" = 1 ] || IMPL=ours
fi
SMALL="$SMALL ${TESTNET_ARGS:-}"
status=0
# shellcheck disable=SC2086
timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/benchmark_test_net.py --device $DEV --rounds "$ROUNDS" \
    --impl $IMPL $SMALL --json "$OUT/testnet.json" > "$OUT/testnet.log" 2>&1 || status=$?
grep '^{' "$OUT/testnet.log" || tail -n 30 "$OUT/testnet.log"
i=0
for b in ${BASES:-}; do
    i=$((i + 1))
    cp lib/pydetectron/_C*.so "$b/pydetectron/" || exit 1
    for r in $(seq "$ROUNDS"); do
        for lib in "$b" lib; do
            timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/benchmark_test_net.py --device $DEV \
                --rounds 1 --impl ours --lib "$lib" --label "$lib" $SMALL \
                >> "$OUT/testnet_ab_$i.log" 2>&1 || status=$?
        done
    done
    grep '^{' "$OUT/testnet_ab_$i.log" || tail -n 30 "$OUT/testnet_ab_$i.log"
done
variant() {   # $1 index, $2 arguments
    echo "== testnet variant $1: $2"
    # shellcheck disable=SC2086
    timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/benchmark_test_net.py --device $DEV \
        --rounds "$ROUNDS" --impl ours --label "ours $2" $SMALL $2 \
        > "$OUT/testnet_variant_$1.log" 2>&1
    local rc=$?
    grep '^{' "$OUT/testnet_variant_$1.log" || tail -n 30 "$OUT/testnet_variant_$1.log"
    return $rc
}
if [ -n "${TESTNET_VARIANTS:-}" ]; then
    for_each_entry "$TESTNET_VARIANTS" variant || status=$?
fi
if [ "${PYSPY:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    timeout "${TESTNET_TIMEOUT:-400}" .whl/py-spy record --idle --threads --format raw --rate 200 \
        -o "$OUT/testnet_pyspy.txt" -- "$PY" dev/benchmark_test_net.py --device $DEV \
        --rounds 1 --impl ours $SMALL > "$OUT/testnet_pyspy.log" 2>&1 || status=$?
    tail -n 3 "$OUT/testnet_pyspy.log"
fi
if [ "${COMPARE:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/compare_device_host.py --device $DEV \
        --max-images 20 $SMALL --json "$OUT/compare.json" > "$OUT/compare.log" 2>&1 || status=$?
    grep '"summary"' "$OUT/compare.log" || tail -n 20 "$OUT/compare.log"
fi
profile_one() {   # $1 index, $2 arguments
    local args=$2 rc
    [ "$args" = - ] && args=
    echo "== testnet profile $1: $args"
    # shellcheck disable=SC2086
    timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/profile_test_net.py --out "$OUT/profile_$1" \
        --device $DEV $SMALL $args > "$OUT/profile_$1.log" 2>&1
    rc=$?
    grep -A12 '"wall_ms_per_image"' "$OUT/profile_$1.log" || tail -n 30 "$OUT/profile_$1.log"
    return $rc
}
if [ -n "${PROFILE:-}" ]; then
    for_each_entry "$PROFILE" profile_one || status=$?
fi
exit $status
