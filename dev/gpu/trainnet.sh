# Mode "trainnet" of dev/gpu_check.sh: dev/benchmark_train_net.py -- tools/train_net_step.py
# itself on coco_mini train2017 photos at 800 / 1333 (frozen-BN Mask R-CNN R-50-FPN, batch 2,
# then batch 8, then bf16 --amp at batch 8) against a torchvision training loop on the same
# images. Logs: $OUT/trainnet_<i>.log and .json. Environment: TRAINNET (entries of
# benchmark_train_net.py arguments separated by ';'), TRAINNET_TIMEOUT (s per entry, 420).
if [ "$CPU" = 1 ]; then
    TRAINNET=${TRAINNET:---device cpu --impl ours --rounds 1 --steps 4 --short 2 --scale 200 --max-size 333 --nw 1}
fi
TRAINNET=${TRAINNET:---bs 2 --rounds 2;--bs 8 --rounds 1 --steps 64 --short 16;--bs 8 --impl ours --rounds 1 --steps 64 --short 16 --extra=--amp}
trainnet_one() {   # $1 index, $2 arguments
    echo "== trainnet $1: $2"
    # shellcheck disable=SC2086
    timeout "${TRAINNET_TIMEOUT:-420}" "$PY" dev/benchmark_train_net.py $2 \
        --json "$OUT/trainnet_$1.json" > "$OUT/trainnet_$1.log" 2>&1
    local rc=$?
    echo "rc=$rc"
    grep '^{' "$OUT/trainnet_$1.log" || tail -n 30 "$OUT/trainnet_$1.log"
    return $rc
}
for_each_entry "$TRAINNET" trainnet_one
