#!/usr/bin/env bash
# The quick start (`bash make.sh demo`): train a small GroupNorm Mask R-CNN from scratch on the
# built-in shapes dataset on the CPU, evaluate it on shapes_val (COCO box and mask AP), and draw
# its predictions on a few val images. Each command is printed before it runs, so any of them can
# be re-run or changed; the script stops with a non-zero exit status when one fails.
#
# Environment:
#   DEMO_OUTPUT_DIR  where the run goes (default Outputs/quick_start): ckpt/ and config.yaml of
#                    the training, test/ (detections, COCO results), images/ (the enlarged val
#                    images), and the logs of the three stages; a previous run's are removed first
#   DEMO_INFER_DIR   where infer_simple.py draws (default infer_outputs)
#   DEMO_CFG         the config (default: the CPU quick-start config below); the keypoint one is
#                    configs/getting_started/keypoints_shapes_e2e_keypoint_rcnn_R-FPN-thin_gn_cpu.yaml
#   DEMO_DATASET     shapes or keypoints_shapes (default: the one the config's TRAIN.DATASETS names)
#   DEMO_TRAIN_ARGS  extra arguments for train_net_step.py, e.g. '--set SOLVER.MAX_ITER 100'
#   DEMO_TEST_ARGS   extra arguments for test_net.py
#   OMP_NUM_THREADS  compute threads (default 1, see below)
#   PYTHON           interpreter (default python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
CFG=${DEMO_CFG:-configs/getting_started/shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml}
OUT=${DEMO_OUTPUT_DIR:-Outputs/quick_start}
INFER_OUT=${DEMO_INFER_DIR:-infer_outputs}
# A few val images with several overlapping shapes each (data/shapes/shapes_val/<id>.jpg)
INFER_IMAGES=(000003 000007 000012 000025)
# python -c "$ENLARGE" SRC_DIR DST_DIR ID...: SRC_DIR/ID.jpg -> DST_DIR/ID.png, 3x larger
ENLARGE='import cv2, os, sys; src, dst = sys.argv[1:3]; os.makedirs(dst, exist_ok=True); [cv2.imwrite(os.path.join(dst, i + ".png"), cv2.resize(cv2.imread(os.path.join(src, i + ".jpg")), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)) for i in sys.argv[3:]]'

# Threads. On a machine shared with other jobs, OpenMP threads that spin-wait for each other slow
# a step of this small model down many times (measured: 13 s instead of 0.3 s per step); passive
# waiting avoids that but also the gain of a second thread. One thread is the robust choice; on an
# idle machine OMP_NUM_THREADS=2 OMP_WAIT_POLICY=ACTIVE is ~25% faster (BENCHMARK.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# Extra arguments, split on blanks (never glob-expanded: '[0]' stays '[0]')
read -r -a train_args <<< "${DEMO_TRAIN_ARGS:-}"
read -r -a test_args <<< "${DEMO_TEST_ARGS:-}"

# One argument as it can be pasted into a shell: as is when plain, else in single quotes.
quote() {
    case $1 in
        '') printf "''" ;;
        *[!A-Za-z0-9_./:=,+-]*) if [[ $1 != *"'"* ]]; then printf "'%s'" "$1"; else printf '%q' "$1"; fi ;;
        *) printf '%s' "$1" ;;
    esac
}

# Print the command, then run it.
run() {
    printf '\n+'
    local a
    for a in "$@"; do printf ' '; quote "$a"; done
    printf '\n'
    "$@"
}

fail() {
    echo "make.sh demo: $*" >&2
    exit 1
}

# Runs "$@" with its output shown and kept in log file $1 (the command's status is returned).
run_logged() {
    local log=$1; shift
    set +e
    run "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

[ -f "$CFG" ] || fail "config $CFG not found"
# The built-in dataset the config trains on: keypoints_shapes for a keypoints_shapes_* TRAIN.DATASETS
# (the keypoint config), shapes otherwise.
DATASET=${DEMO_DATASET:-$("$PY" -c "import sys; sys.path.insert(0, 'lib')
from pydetectron.core.config import cfg, merge_cfg_from_file
merge_cfg_from_file(sys.argv[1])
names = [n for n in cfg.TRAIN.DATASETS if n.startswith('keypoints_shapes')]
print('keypoints_shapes' if names else 'shapes')" "$CFG")} || fail "cannot read the config $CFG"
case $DATASET in shapes|keypoints_shapes) ;; *) fail "DEMO_DATASET must be shapes or keypoints_shapes, got '$DATASET'" ;; esac
echo "make.sh demo: config $CFG, dataset $DATASET, output $OUT, OMP_NUM_THREADS=$OMP_NUM_THREADS," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
# A previous run's checkpoints would be resumed (TRAIN.AUTO_RESUME) instead of training anew
rm -rf "$OUT/ckpt" "$OUT/test" "$OUT/images" "$OUT/train.log" "$OUT/test.log" "$OUT/infer.log"
mkdir -p "$OUT"
t0=$(date +%s)

# 1. Train (the shapes datasets are generated under data/shapes on first use)
run_logged "$OUT/train.log" "$PY" tools/train_net_step.py --dataset "$DATASET" --cfg "$CFG" \
    --no_cuda --nw 0 --disp_interval 100 --skip-test --output_dir "$OUT" ${train_args[@]+"${train_args[@]}"} \
    || fail "training failed (exit $?); its log: $OUT/train.log"
ckpt=$(ls "$OUT"/ckpt/model_step*.pth 2>/dev/null | sort -V | tail -n 1)
[ -n "$ckpt" ] || fail "training wrote no checkpoint under $OUT/ckpt"
t1=$(date +%s)

# 2. Evaluate on the val split: COCO box and mask (or keypoint) AP
run_logged "$OUT/test.log" "$PY" tools/test_net.py --dataset "$DATASET" --cfg "$CFG" \
    --load_ckpt "$ckpt" --output_dir "$OUT/test" --no_cuda --quiet ${test_args[@]+"${test_args[@]}"} \
    || fail "evaluation failed (exit $?); its log: $OUT/test.log"
t2=$(date +%s)

# 3. Draw the predictions on a few val images, enlarged 3x so that the class labels are legible
#    on them (the model resizes every input to TEST.SCALE, 160 px, so its input hardly changes)
val_dir=$("$PY" -c "import sys; sys.path.insert(0, 'lib')
import os; from pydetectron.datasets import dataset_catalog as c
print(os.path.relpath(c.get_im_dir(c.prepare(sys.argv[1] + '_val'))))" "$DATASET") \
    || fail "cannot find the ${DATASET}_val images"
run "$PY" -c "$ENLARGE" "$val_dir" "$OUT/images" "${INFER_IMAGES[@]}" \
    || fail "cannot read the ${DATASET}_val images in $val_dir"
run_logged "$OUT/infer.log" "$PY" tools/infer_simple.py --cfg "$CFG" --load_ckpt "$ckpt" \
    --dataset "$DATASET" --image_dir "$OUT/images" --output_dir "$INFER_OUT" --output_ext jpg \
    --no_cuda || fail "drawing failed (exit $?); its log: $OUT/infer.log"
t3=$(date +%s)

# A task's AP: the first number of the line that follows "copypaste: Task: <task>" and the
# metric names (Detectron's copy-paste summary).
ap() {
    awk -v task="$1" '
        /copypaste: / {
            line = $0; sub(/.*copypaste: /, "", line)
            if (line ~ /^Task: /) { cur = substr(line, 7); n = 0; next }
            if (cur == task && ++n == 2) { split(line, v, ","); print v[1]; exit }
        }' "$OUT/test.log"
}
echo
echo "================================ quick start ================================"
found=0
for task in box mask keypoint; do
    value=$(ap "$task")
    [ -n "$value" ] || continue
    printf '%s %s AP: %s\n' "${DATASET}_val" "$task" "$value"
    found=1
done
[ "$found" = 1 ] || fail "no AP in $OUT/test.log"
printf 'wall time: train %ds, evaluate %ds, draw %ds, total %ds\n' \
    $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t3 - t0))
echo "checkpoint: $ckpt"
echo "detections and COCO results: $OUT/test; drawings: $INFER_OUT/"
echo "============================================================================="
