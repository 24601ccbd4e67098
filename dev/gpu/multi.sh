# Mode "multi" of dev/gpu_check.sh (issue 10), for the NGPU GPUs the machine has (default: all):
# Mask R-CNN R-50-FPN on coco_mini with tools/train_net_step.py
#   a. one process, the dict-aware DataParallel over NGPU GPUs (NUM_GPUS NGPU);
#   b. torchrun --nproc_per_node NGPU (DistributedDataParallel, NCCL);
# each MULTI_STEPS steps of 2 images per GPU at LR 0 (the weights stay put, so the losses of a and
# b can be compared step by step); then tools/test_net.py on VAL_IMAGES val images with the
# checkpoint of a, in one process and with --multi-gpu-testing, and a comparison of the two
# detections.pkl. Logs: $OUT/train_dp.log, train_ddp.log, test_one.log, test_multi.log and
# multi_summary.txt (printed).
# Environment: NGPU, MULTI_STEPS (20), VAL_IMAGES (16), EXTRA (more train_net_step/test_net flags).
# CPU=1: NGPU 1, --no_cuda, 2 steps at scale 128 (training and test), 2 val images.
# NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 stay set (the machines' NVLink
# multicast must stay off).
find_coco_mini || exit 1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
if [ "$CPU" = 1 ]; then
    NGPU=${NGPU:-1} MULTI_STEPS=${MULTI_STEPS:-2} VAL_IMAGES=${VAL_IMAGES:-2} SCALE=128 MAXSIZE=213
    TEST_SCALE=(TEST.SCALE 128 TEST.MAX_SIZE 213)
else
    NGPU=${NGPU:-$(nvidia-smi -L | wc -l)} MULTI_STEPS=${MULTI_STEPS:-20}
    VAL_IMAGES=${VAL_IMAGES:-16} SCALE=400 MAXSIZE=666
    TEST_SCALE=()   # the config's test scale
fi
EXTRA="${EXTRA:-} $DEVICE_FLAG"
W=$WORK/multi
mkdir -p "$W"
CFG=configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml
TRAIN=(--dataset "coco_json:$COCO/annotations/instances_train2017.json:$COCO/images/train2017"
       --cfg "$CFG" --nw 2 --disp_interval 1 --allow_random_frozen_bn
       --set NUM_GPUS "$NGPU" TRAIN.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.0 SOLVER.WARM_UP_ITERS 0
       SOLVER.MAX_ITER "$MULTI_STEPS" "TRAIN.SCALES" "($SCALE,)" TRAIN.MAX_SIZE "$MAXSIZE"
       TRAIN.SNAPSHOT_ITERS 100000 MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False)
status=0
run() {  # $1 log name, then the command
    local log=$1; shift
    "$@" > "$OUT/$log.log" 2>&1
    local rc=$?
    echo "rc=$rc"
    [ $rc -ne 0 ] && status=$rc
    return 0
}
echo "== $NGPU GPU(s): a. DataParallel"
# shellcheck disable=SC2086
run train_dp "$PY" tools/train_net_step.py "${TRAIN[@]}" $EXTRA --output_dir "$W/dp"
echo "== b. DistributedDataParallel (torchrun)"
# shellcheck disable=SC2086
run train_ddp torchrun --standalone --nproc_per_node="$NGPU" tools/train_net_step.py \
    "${TRAIN[@]}" $EXTRA --output_dir "$W/ddp"
val_subset "$COCO/annotations/instances_val2017.json" "$W/val.json" "$VAL_IMAGES"
ckpt=$(ls -t "$W"/dp/ckpt/model_step*.pth 2> /dev/null | head -n 1)
TEST=(--dataset "coco_json:$W/val.json:$COCO/images/val2017" --cfg "$CFG" --load_ckpt "$ckpt"
      --quiet --set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False NUM_GPUS "$NGPU"
      "${TEST_SCALE[@]}")
echo "== c. test_net: one process, then --multi-gpu-testing"
# shellcheck disable=SC2086
run test_one "$PY" tools/test_net.py "${TEST[@]}" $EXTRA --output_dir "$W/test1"
# shellcheck disable=SC2086
run test_multi "$PY" tools/test_net.py "${TEST[@]}" $EXTRA --multi-gpu-testing \
    --output_dir "$W/testN"
"$PY" dev/gpu/multi_summary.py "$OUT" "$W" | tee "$OUT/multi_summary.txt"
exit $status
