#!/usr/bin/env bash
# On a machine with a CUDA GPU, in one go (planned for <= 540 s on one H100):
#   a. build pydetectron._C with its CUDA kernels;
#   b. run every CUDA-marked test (python3 -m pytest tests -m cuda);
#   c. train e2e_mask_rcnn_R-50-FPN_1x and e2e_keypoint_rcnn_R-50-FPN_1x (person keypoints) on
#      coco_mini with tools/train_net_step.py, each in float32 and with --amp (bfloat16), and print
#      the loss curves side by side (the bf16 curve should follow the float32 one);
#   d. run tools/test_net.py on a few coco_mini val images with the trained Mask R-CNN;
#   e. run tools/benchmark.py (Mask R-CNN against torchvision; the rest of the time budget).
# Logs go to $OUT (default /tmp/gpu_train_check): build.log, pytest_cuda.log, train.log,
# test_net.log, bench.log, bench.json, summary.txt; the summary is printed last.
#
#   bash tools/gpu_train_check.sh          coco_mini from .gpu_data/coco_mini (an ignored folder
#                                          carried to the GPU machine), else ../shared/data/coco_mini
#   CPU=1 bash tools/gpu_train_check.sh    rehearsal on the CPU with tiny settings (no build)
# Before a device call, here: echo /.gpu_data/ >> .git/info/exclude; mkdir -p .gpu_data;
# cp -r ../shared/data/coco_mini .gpu_data/; then run it with carry [".gpu_data", ".whl"].
# Environment: PARTS (default tests,train,test_net,bench: the steps after the build to run),
# BENCH (tools/benchmark.py's arguments instead of this script's), STEPS (training steps, 50), LR,
# TRAIN_MODELS ("mask keypoint"), TRAIN_VARIANTS ("fp32=;bf16=--amp": NAME=flags runs),
# BUDGET (seconds, 535), OUT, WORK (scratch, emptied first).
#
# No ImageNet weights are at hand on the GPU machine, and the frozen-BN (AffineChannel) R-50
# diverges from random weights (its activations grow to ~1e3 through 50 unnormalised layers). So
# each run starts from the same data-dependent initialisation: the random model with every
# AffineChannel set to the per-channel mean / std of its input on 8 coco_mini training images
# (what an ImageNet BN folded into AffineChannel is, with statistics from these images), saved as a
# checkpoint and given to --load_ckpt. Where pycocotools is missing (the GPU machine), its wheel is
# installed from .whl/ (an ignored folder, carried).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_train_check}
WORK=${WORK:-/tmp/gpu_train_check_work}
CPU=${CPU:-0}
BUDGET=${BUDGET:-535}   # seconds for the whole script; the benchmark gets what is left
PARTS=${PARTS:-tests,train,test_net,bench}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"

MASK_CFG=configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml
KP_CFG=configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml
if [ "$CPU" = 1 ]; then
    STEPS=${STEPS:-4} DISP=1 SCALE=128 MAXSIZE=213 NW=1 T_TRAIN=300 T_TESTS=300 VAL_IMAGES=2
    DEVICE_FLAG=--no_cuda
    BENCH_ARGS=(--device cpu --no-peer --image_size 64x96 --objects 2 --warmup 0 --iters 1
                --batch_sizes 2 --fp32 --infer_batch 2 --loader_workers 0 --loader_iters 2
                --set TRAIN.RPN_PRE_NMS_TOP_N 100 TRAIN.RPN_POST_NMS_TOP_N 50
                TRAIN.BATCH_SIZE_PER_IM 16 TEST.RPN_PRE_NMS_TOP_N 50 TEST.RPN_POST_NMS_TOP_N 20
                TEST.DETECTIONS_PER_IM 5)
else
    STEPS=${STEPS:-50} DISP=5 SCALE=400 MAXSIZE=666 NW=4 T_TRAIN=${T_TRAIN:-75} T_TESTS=170
    VAL_IMAGES=8
    DEVICE_FLAG=
    BENCH_ARGS=(--models mask --warmup 2 --iters 15 --max_seconds 5 --max_batch 64
                --loader_workers 1,4 --loader_iters 40 --profile)
fi
if [ -n "${BENCH:-}" ]; then read -r -a BENCH_ARGS <<< "$BENCH"; fi
want() { [[ ",$PARTS," == *",$1,"* ]]; }


# --- environment ------------------------------------------------------------------------------
# shellcheck source=tools/gpu_env.sh
. tools/gpu_env.sh
ensure_pycocotools || exit 1
if ! "$PY" -c "import pytest" 2> /dev/null && ls .whl/pytest-*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl || exit 1
    case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH};; esac
fi
COCO=${COCO:-.gpu_data/coco_mini}
[ -d "$COCO" ] || COCO=../shared/data/coco_mini
if [ ! -d "$COCO/annotations" ]; then echo "coco_mini not found (.gpu_data/coco_mini)"; exit 1; fi
# the tests find coco_mini at ../shared/data/coco_mini
if [ ! -e ../shared/data/coco_mini ] && [ "$COCO" != ../shared/data/coco_mini ]; then
    mkdir -p ../shared/data && ln -s "$ROOT/$COCO" ../shared/data/coco_mini
fi
{
    [ "$CPU" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv,noheader
    "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$WORK/machine.txt"

# --- a. build ---------------------------------------------------------------------------------
if [ "$CPU" = 1 ]; then
    stamp "a. build: skipped (CPU=1)"; BUILD="skipped"
else
    stamp "a. build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
    start=$(date +%s)
    if build_cuda_extension "$OUT/build.log"; then
        BUILD="ok in $(( $(date +%s) - start )) s"
    else
        echo "BUILD FAILED"; exit 1
    fi
    echo "built: $BUILD"
fi
export PYTHONPATH=$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}

# --- b. CUDA tests ----------------------------------------------------------------------------
if want tests; then
    stamp "b. CUDA tests"
    timeout "$T_TESTS" "$PY" -m pytest tests -m cuda -q -rfEs -p no:randomly \
        > "$OUT/pytest_cuda.log" 2>&1
    echo "pytest rc=$? $(tail -n 1 "$OUT/pytest_cuda.log")" | tee "$WORK/tests.txt"
    grep -E "^(FAILED|ERROR)|Fatal|Segmentation" "$OUT/pytest_cuda.log" | head -n 20
fi

# --- c. training ------------------------------------------------------------------------------
# The data-dependent initial weights (see the top of this file):
#   python3 init_weights.py CONFIG DATASET SCALE MAX_SIZE OUT.pth
cat > "$WORK/init_weights.py" <<'EOF'
import sys
import torch
from pydetectron.core.config import assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list
from pydetectron.datasets import dataset_catalog
from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.nn.affine import AffineChannel2d
from pydetectron.roi_data.loader import build_train_loader

cfg_file, dataset, scale, max_size, out = sys.argv[1:6]
merge_cfg_from_file(cfg_file)
names, num_classes = dataset_catalog.resolve_dataset_arg(dataset, training=True)
merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'MODEL.NUM_CLASSES', num_classes,
                     'TRAIN.SCALES', (int(scale),), 'TRAIN.MAX_SIZE', int(max_size)])
assert_and_infer_cfg()
roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
data = next(iter(build_train_loader(roidb, ratio_list, ratio_index, 8, 1, 0, seed=0)))['data'][0]
torch.manual_seed(cfg.RNG_SEED)
model = Generalized_RCNN()


def fold_statistics(module, inputs):
    # y = (x - mean) / std per channel, the statistics of this input: a folded, frozen BN
    x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (C, N*H*W)
    std, mean = torch.std_mean(x, dim=1)
    module.weight.data.copy_(1. / (std + 1e-5))
    module.bias.data.copy_(-mean / (std + 1e-5))


hooks = [m.register_forward_pre_hook(fold_statistics) for m in model.modules()
         if isinstance(m, AffineChannel2d)]
with torch.no_grad():
    feats = model.Conv_Body(data)
for h in hooks:
    h.remove()
print('initial weights: %d AffineChannel2d set from %s; FPN output std %s'
      % (len(hooks), tuple(data.shape), ' '.join('%.2f' % f.std().item() for f in feats)))
torch.save({'model': model.state_dict(), 'step': -1}, out)
EOF

# A 1-GPU, 2-image run with the 8-GPU config's schedule left alone (NUM_GPUS 1, IMS_PER_BATCH 2 set
# before train_net_step's adaptive changes, so MAX_ITER is not multiplied by 8) and Detectron's
# linear-scaling LR for 2 images, 0.02 x 2 / 16 (0.005 made Mask R-CNN diverge after ~40 steps).
LR=${LR:-0.0025}
# Each training run of TRAIN_VARIANTS: NAME=train_net_step flags, runs separated by ';'; the
# runs all start from the same initial weights and their curves are printed side by side.
TRAIN_VARIANTS=${TRAIN_VARIANTS:-fp32=;bf16=--amp}
train() {  # $1 run name, $2 config, $3 annotation file, $4 init .pth, $5... extra flags
    stamp "c. train $1"
    timeout "$T_TRAIN" "$PY" tools/train_net_step.py \
        --dataset "coco_json:$COCO/annotations/$3:$COCO/images/train2017" --cfg "$2" \
        --bs 2 --nw "$NW" --disp_interval "$DISP" --load_ckpt "$4" --output_dir "$WORK/$1" \
        $DEVICE_FLAG "${@:5}" \
        --set NUM_GPUS 1 TRAIN.IMS_PER_BATCH 2 SOLVER.BASE_LR "$LR" SOLVER.WARM_UP_ITERS 10 \
        SOLVER.MAX_ITER "$STEPS" TRAIN.SCALES "($SCALE,)" TRAIN.MAX_SIZE "$MAXSIZE" \
        TRAIN.SNAPSHOT_ITERS 100000 MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False \
        > "$WORK/train_$1.log" 2>&1
    local rc=$?
    echo "$rc" > "$WORK/rc_$1"
    { echo "######## $1 (rc $rc)"; cat "$WORK/train_$1.log"; } >> "$OUT/train.log"
    echo "$1: rc=$rc; $(grep -E "^\s+loss: " "$WORK/train_$1.log" | tail -n 1 | sed 's/^\s*//')"
    [ $rc -eq 0 ] || grep -E "Error|error|Traceback" "$WORK/train_$1.log" | tail -n 3
}

: > "$OUT/train.log"
want train && for model in ${TRAIN_MODELS:-mask keypoint}; do
    if [ $model = mask ]; then cfg=$MASK_CFG ann=instances_train2017.json
    else cfg=$KP_CFG ann=person_keypoints_train2017.json; fi
    stamp "c. initial weights for $model"
    timeout 90 "$PY" "$WORK/init_weights.py" "$cfg" \
        "coco_json:$COCO/annotations/$ann:$COCO/images/train2017" "$SCALE" "$MAXSIZE" \
        "$WORK/${model}_init.pth" 2>&1 | tee -a "$OUT/train.log" | grep -E "initial weights|Error"
    IFS=';' read -r -a train_variants <<< "$TRAIN_VARIANTS"
    for tv in "${train_variants[@]}"; do
        # shellcheck disable=SC2086
        train "${model}_${tv%%=*}" "$cfg" "$ann" "$WORK/${model}_init.pth" ${tv#*=}
    done
done

# --- d. test_net --------------------------------------------------------------------------------
want test_net && stamp "d. test_net on $VAL_IMAGES coco_mini val images with the trained Mask R-CNN"
want test_net && "$PY" - "$COCO/annotations/instances_val2017.json" "$WORK/val_subset.json" "$VAL_IMAGES" <<'EOF'
import json
import sys
with open(sys.argv[1]) as f:
    d = json.load(f)
d['images'] = d['images'][:int(sys.argv[3])]
ids = {im['id'] for im in d['images']}
d['annotations'] = [a for a in d['annotations'] if a['image_id'] in ids]
with open(sys.argv[2], 'w') as f:
    json.dump(d, f)
EOF
ckpt=$(ls -t "$WORK"/mask_fp32/ckpt/model_step*.pth 2> /dev/null | head -n 1)
if ! want test_net; then
    :
elif [ -n "$ckpt" ]; then
    timeout 120 "$PY" tools/test_net.py --quiet --dataset \
        "coco_json:$WORK/val_subset.json:$COCO/images/val2017" --cfg "$MASK_CFG" \
        --load_ckpt "$ckpt" --output_dir "$WORK/test_mask" $DEVICE_FLAG \
        --set TEST.SCALE "$SCALE" TEST.MAX_SIZE "$MAXSIZE" \
        MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False > "$OUT/test_net.log" 2>&1
    echo "test_net rc=$?" | tee "$WORK/test_net.txt"
else
    echo "test_net: no checkpoint of mask_fp32 to test" | tee "$WORK/test_net.txt" "$OUT/test_net.log"
fi

# --- e. benchmark ----------------------------------------------------------------------------
remaining=$(( $(left) - 15 ))
want bench && stamp "e. benchmark (${remaining} s left for it)"
if ! want bench; then
    :
elif [ "$remaining" -gt 30 ]; then
    timeout "$remaining" "$PY" tools/benchmark.py "${BENCH_ARGS[@]}" --json "$OUT/bench.json" \
        > "$OUT/bench.log" 2>&1
    echo "benchmark rc=$?" | tee "$WORK/bench.txt"
else
    echo "benchmark: skipped, out of time" | tee "$WORK/bench.txt" "$OUT/bench.log"
fi

# --- summary ---------------------------------------------------------------------------------
RUNS=""
for model in ${TRAIN_MODELS:-mask keypoint}; do
    IFS=';' read -r -a train_variants <<< "$TRAIN_VARIANTS"
    for tv in "${train_variants[@]}"; do RUNS="$RUNS ${model}_${tv%%=*}"; done
done
RUNS="$RUNS" "$PY" - "$WORK" "$OUT" "$BUILD" "$(( $(date +%s) - T0 ))" <<'EOF' | tee "$OUT/summary.txt"
import os
import re
import sys

work, out, build, seconds = sys.argv[1:5]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


print('\n==================== GPU training check: summary (%s s) ====================' % seconds)
print(read(os.path.join(work, 'machine.txt')).strip())
print('a. build: %s' % build)
print('b. %s' % read(os.path.join(work, 'tests.txt')).strip())
runs = os.environ['RUNS'].split()
curves, rows = {}, []
for run in runs:
    log = read(os.path.join(work, 'train_%s.log' % run))
    steps = [int(s) for s in re.findall(r'\[Step (\d+) / \d+\]', log)]
    stats = re.findall(r'loss: ([-\d.naninf]+), lr: [\d.e-]+ time: ([\d.]+)', log)
    mems = re.findall(r'mem: (\d+)', log)
    curves[run] = dict(zip(steps, (float(l) for l, _ in stats)))
    rc = read(os.path.join(work, 'rc_%s' % run)).strip() or '-'
    last_time = float(stats[-1][1]) if stats else float('nan')
    rows.append((run, rc, max(steps) if steps else 0, last_time, mems[-1] if mems else '-'))
print('c. training (tools/train_net_step.py, 2 images per batch, median-smoothed total loss):')
print('   %-15s %4s %6s %10s %8s' % ('run', 'rc', 'steps', 's/step', 'MiB'))
for run, rc, n, t, mem in rows:
    print('   %-15s %4s %6d %10.3f %8s' % (run, rc, n, t, mem))
all_steps = sorted(set().union(*[set(c) for c in curves.values()]))
print('   %6s %s' % ('step', ''.join('%15s' % r for r in runs)))
for s in all_steps:
    print('   %6d %s' % (s, ''.join('%15s' % ('%.4f' % curves[r][s] if s in curves[r] else '-')
                                   for r in runs)))
print('d. %s' % read(os.path.join(work, 'test_net.txt')).strip())
for line in read(os.path.join(out, 'test_net.log')).splitlines():
    if re.search(r'copypaste: (Task: \w+|[\d.,]+)$|Error|error:', line):
        print('   ' + line.strip()[-150:])
print('e. %s' % read(os.path.join(work, 'bench.txt')).strip())
bench = read(os.path.join(out, 'bench.log'))
for line in bench.splitlines():
    if 'host-device synchronisations' in line or 'search ' in line or 'Error' in line:
        print('   ' + line.strip())
cut = bench.find('== training')
print(bench[cut:] if cut >= 0 else '\n'.join(bench.splitlines()[-25:]))
EOF
