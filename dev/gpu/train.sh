# Mode "train" of dev/gpu_check.sh (planned for <= 300 s on one H100): train
# e2e_mask_rcnn_R-50-FPN_1x and e2e_keypoint_rcnn_R-50-FPN_1x (person keypoints) on coco_mini
# with tools/train_net_step.py, each in float32 and with --amp (bfloat16), print the loss curves
# side by side (the bf16 curve should follow the float32 one), then run tools/test_net.py on a few
# coco_mini val images with the trained Mask R-CNN. Logs: $OUT/train.log, $OUT/test_net.log,
# $OUT/train_summary.txt (printed last).
#   bash dev/gpu_check.sh train            coco_mini from .gpu_data/coco_mini, carried
#   CPU=1 bash dev/gpu_check.sh train      rehearsal on the CPU with tiny settings
# Environment: TRAIN_STEPS (training steps, 50), LR, TRAIN_MODELS ("mask keypoint"),
# TRAIN_VARIANTS ("fp32=;bf16=--amp": NAME=flags runs, separated by ';'), T_TRAIN (seconds per
# run, 75), VAL_IMAGES (8).
#
# No ImageNet weights are at hand on the GPU machine, and the frozen-BN (AffineChannel) R-50
# diverges from random weights (its activations grow to ~1e3 through 50 unnormalised layers). So
# each run starts from the same data-dependent initialisation (dev/gpu/init_weights.py): the
# random model with every AffineChannel set to the per-channel mean / std of its input on 8
# coco_mini training images, saved as a checkpoint and given to --load_ckpt.
find_coco_mini || exit 1
MASK_CFG=configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml
KP_CFG=configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml
if [ "$CPU" = 1 ]; then
    TRAIN_STEPS=${TRAIN_STEPS:-4} DISP=1 SCALE=128 MAXSIZE=213 NW=1 T_TRAIN=${T_TRAIN:-300}
    VAL_IMAGES=${VAL_IMAGES:-2}
else
    TRAIN_STEPS=${TRAIN_STEPS:-50} DISP=5 SCALE=400 MAXSIZE=666 NW=4 T_TRAIN=${T_TRAIN:-75}
    VAL_IMAGES=${VAL_IMAGES:-8}
fi
W=$WORK/train
mkdir -p "$W"

# A 1-GPU, 2-image run with the 8-GPU config's schedule left alone (NUM_GPUS 1, IMS_PER_BATCH 2 set
# before train_net_step's adaptive changes, so MAX_ITER is not multiplied by 8) and Detectron's
# linear-scaling LR for 2 images, 0.02 x 2 / 16 (0.005 made Mask R-CNN diverge after ~40 steps).
LR=${LR:-0.0025}
TRAIN_VARIANTS=${TRAIN_VARIANTS:-fp32=;bf16=--amp}
IFS=';' read -r -a train_variants <<< "$TRAIN_VARIANTS"
train() {  # $1 run name, $2 config, $3 annotation file, $4 init .pth, $5... extra flags
    stamp "train $1"
    timeout "$T_TRAIN" "$PY" tools/train_net_step.py \
        --dataset "coco_json:$COCO/annotations/$3:$COCO/images/train2017" --cfg "$2" \
        --bs 2 --nw "$NW" --disp_interval "$DISP" --load_ckpt "$4" --output_dir "$W/$1" \
        $DEVICE_FLAG "${@:5}" \
        --set NUM_GPUS 1 TRAIN.IMS_PER_BATCH 2 SOLVER.BASE_LR "$LR" SOLVER.WARM_UP_ITERS 10 \
        SOLVER.MAX_ITER "$TRAIN_STEPS" TRAIN.SCALES "($SCALE,)" TRAIN.MAX_SIZE "$MAXSIZE" \
        TRAIN.SNAPSHOT_ITERS 100000 MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False \
        > "$W/train_$1.log" 2>&1
    local rc=$?
    echo "$rc" > "$W/rc_$1"
    { echo "######## $1 (rc $rc)"; cat "$W/train_$1.log"; } >> "$OUT/train.log"
    echo "$1: rc=$rc; $(grep -E "^\s+loss: " "$W/train_$1.log" | tail -n 1 | sed 's/^\s*//')"
    [ $rc -eq 0 ] || grep -E "Error|error|Traceback" "$W/train_$1.log" | tail -n 3
    return $rc
}

status=0
RUNS=""
: > "$OUT/train.log"
for model in ${TRAIN_MODELS:-mask keypoint}; do
    if [ "$model" = mask ]; then cfg=$MASK_CFG ann=instances_train2017.json
    else cfg=$KP_CFG ann=person_keypoints_train2017.json; fi
    stamp "initial weights for $model"
    timeout 90 "$PY" dev/gpu/init_weights.py "$cfg" \
        "coco_json:$COCO/annotations/$ann:$COCO/images/train2017" "$SCALE" "$MAXSIZE" \
        "$W/${model}_init.pth" 2>&1 | tee -a "$OUT/train.log" | grep -E "initial weights|Error"
    for tv in "${train_variants[@]}"; do
        # shellcheck disable=SC2086
        train "${model}_${tv%%=*}" "$cfg" "$ann" "$W/${model}_init.pth" ${tv#*=} || status=1
        RUNS="$RUNS ${model}_${tv%%=*}"
    done
done

stamp "test_net on $VAL_IMAGES coco_mini val images with the trained Mask R-CNN"
val_subset "$COCO/annotations/instances_val2017.json" "$W/val_subset.json" "$VAL_IMAGES"
first=${train_variants[0]%%=*}
ckpt=$(ls -t "$W"/mask_"$first"/ckpt/model_step*.pth 2> /dev/null | head -n 1)
if [ -n "$ckpt" ]; then
    timeout 120 "$PY" tools/test_net.py --quiet --dataset \
        "coco_json:$W/val_subset.json:$COCO/images/val2017" --cfg "$MASK_CFG" \
        --load_ckpt "$ckpt" --output_dir "$W/test_mask" $DEVICE_FLAG \
        --set TEST.SCALE "$SCALE" TEST.MAX_SIZE "$MAXSIZE" \
        MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False > "$OUT/test_net.log" 2>&1
    rc=$?
    echo "test_net rc=$rc" | tee "$W/test_net.txt"
    [ $rc -ne 0 ] && status=$rc
else
    echo "test_net: no checkpoint of mask_$first to test" | tee "$W/test_net.txt" "$OUT/test_net.log"
fi

RUNS="$RUNS" "$PY" dev/gpu/train_summary.py "$W" "$OUT" | tee "$OUT/train_summary.txt"
exit $status
