# Mode "perf" of dev/gpu_check.sh: dev/benchmark.py once per variant of VARIANTS, each variant a
# string of benchmark arguments, variants separated by ';', each followed by COMMON. Logs:
# $OUT/bench_<i>.log and .json; the training/inference tables, the profile's device time and
# host-device syncs are printed.
#   VARIANTS="--models mask --batch_sizes 2;--models mask --batch_sizes 2 --channels_last" \
#       bash dev/gpu_check.sh perf
# Environment: VARIANTS (default: Mask R-CNN training at batch 2 and inference beside torchvision
# with --profile, then channels-last alone), COMMON (default --parts train,infer --warmup 3
# --iters 20 --max_seconds 6 --infer_batch 8), BENCH_TIMEOUT (seconds per variant, 240).
# On CPU=1 the default is one tiny run (64x96 images, few RoIs, no torchvision).
if [ "$CPU" = 1 ]; then
    VARIANTS=${VARIANTS:---device cpu --no-peer --image_size 64x96 --objects 2 --warmup 0 --iters 1 --batch_sizes 2 --fp32 --infer_batch 2 --loader_workers 0 --loader_iters 2 --set TRAIN.RPN_PRE_NMS_TOP_N 100 TRAIN.RPN_POST_NMS_TOP_N 50 TRAIN.BATCH_SIZE_PER_IM 16 TEST.RPN_PRE_NMS_TOP_N 50 TEST.RPN_POST_NMS_TOP_N 20 TEST.DETECTIONS_PER_IM 5}
    COMMON=${COMMON:-}
fi
COMMON=${COMMON---parts train,infer --warmup 3 --iters 20 --max_seconds 6 --infer_batch 8}
VARIANTS=${VARIANTS:---models mask --batch_sizes 2 --profile;--models mask --batch_sizes 2 --no-peer --channels_last}
perf_one() {   # $1 index, $2 benchmark.py arguments
    echo "== variant $1: $2"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-240}" "$PY" dev/benchmark.py $2 $COMMON \
        --json "$OUT/bench_$1.json" > "$OUT/bench_$1.log" 2>&1
    local rc=$?
    echo "rc=$rc"
    grep -E "host-device synchronisations|device time per step|^\s+[0-9]+\s+lib/" "$OUT/bench_$1.log"
    sed -n '/^== training/,$p' "$OUT/bench_$1.log"
    return $rc
}
for_each_entry "$VARIANTS" perf_one
