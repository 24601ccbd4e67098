# Mode "testnet" of dev/gpu_check.sh: dev/benchmark_test_net.py -- test_net's own path (reading,
# network, NMS, mask pasting, RLE, detections.pkl) on coco_mini val2017 photos at 800 / 1333 with
# 100 detections per image, paired in turns with torchvision's evaluation loop; then, for each
# older package copy named in BASES (see ab.sh), the same path of that copy against this one.
# Logs: $OUT/testnet*.log and .json. Environment: TESTNET_ROUNDS (3), TESTNET_TIMEOUT (s, 400).
ROUNDS=${TESTNET_ROUNDS:-3}
DEV=cuda
[ "$CPU" = 1 ] && DEV=cpu
status=0
timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/benchmark_test_net.py --device $DEV --rounds "$ROUNDS" \
    --impl ours,torchvision --json "$OUT/testnet.json" > "$OUT/testnet.log" 2>&1 || status=$?
grep '^{' "$OUT/testnet.log" || tail -n 30 "$OUT/testnet.log"
i=0
for b in ${BASES:-}; do
    i=$((i + 1))
    cp lib/pydetectron/_C*.so "$b/pydetectron/" || exit 1
    for r in $(seq "$ROUNDS"); do
        for lib in "$b" lib; do
            timeout "${TESTNET_TIMEOUT:-400}" "$PY" dev/benchmark_test_net.py --device $DEV \
                --rounds 1 --impl ours --lib "$lib" --label "$lib" \
                >> "$OUT/testnet_ab_$i.log" 2>&1 || status=$?
        done
    done
    grep '^{' "$OUT/testnet_ab_$i.log" || tail -n 30 "$OUT/testnet_ab_$i.log"
done
exit $status
