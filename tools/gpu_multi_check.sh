#!/usr/bin/env bash
# Multi-GPU check (issue 10) on the GPU machine, in one device call, for the NGPU GPUs it has
# (default: all): Mask R-CNN R-50-FPN on coco_mini with tools/train_net_step.py
#   a. one process, the dict-aware DataParallel over NGPU GPUs (NUM_GPUS NGPU);
#   b. torchrun --nproc_per_node NGPU (DistributedDataParallel, NCCL);
# each STEPS steps of 2 images per GPU at LR 0 (the weights stay put, so the losses of a and b
# can be compared step by step); then tools/test_net.py on VAL_IMAGES val images with the
# checkpoint of a, in one process and with --multi-gpu-testing, and a comparison of the two
# detections.pkl. Logs and a summary under $OUT (default /tmp/gpu_multi_check).
# NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 stay set (the machines' NVLink
# multicast must stay off). Carry .gpu_data (coco_mini) and .whl (pycocotools) to the machine.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu_multi_check}
WORK=${WORK:-/tmp/gpu_multi_work}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
EXTRA=${EXTRA:-}   # e.g. EXTRA=--no_cuda NGPU=1 for a rehearsal on the CPU
STEPS=${STEPS:-20}
VAL_IMAGES=${VAL_IMAGES:-16}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
rm -rf "$WORK"; mkdir -p "$OUT" "$WORK"
# shellcheck source=tools/gpu_env.sh
. tools/gpu_env.sh
ensure_pycocotools || exit 1
ls lib/pydetectron/_C*.so > /dev/null 2>&1 || build_cuda_extension "$OUT/build.log" || exit 1
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
C=.gpu_data/coco_mini
[ -d "$C" ] || C=../shared/data/coco_mini
CFG=configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml
TRAIN=(--dataset "coco_json:$C/annotations/instances_train2017.json:$C/images/train2017"
       --cfg "$CFG" --nw 2 --disp_interval 1 --allow_random_frozen_bn
       --set NUM_GPUS "$NGPU" TRAIN.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.0 SOLVER.WARM_UP_ITERS 0
       SOLVER.MAX_ITER "$STEPS" "TRAIN.SCALES" "(400,)" TRAIN.MAX_SIZE 666
       TRAIN.SNAPSHOT_ITERS 100000 MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False)
echo "== $NGPU GPU(s): a. DataParallel"
python3 tools/train_net_step.py "${TRAIN[@]}" $EXTRA --output_dir "$WORK/dp" > "$OUT/train_dp.log" 2>&1
echo "rc=$?"
echo "== b. DistributedDataParallel (torchrun, NCCL)"
torchrun --standalone --nproc_per_node="$NGPU" tools/train_net_step.py "${TRAIN[@]}" $EXTRA \
    --output_dir "$WORK/ddp" > "$OUT/train_ddp.log" 2>&1
echo "rc=$?"
python3 - "$WORK/val.json" "$C/annotations/instances_val2017.json" "$VAL_IMAGES" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
d['images'] = d['images'][:int(sys.argv[3])]
ids = {i['id'] for i in d['images']}
d['annotations'] = [a for a in d['annotations'] if a['image_id'] in ids]
json.dump(d, open(sys.argv[1], 'w'))
PY
ckpt=$(ls -t "$WORK"/dp/ckpt/model_step*.pth 2> /dev/null | head -n 1)
TEST=(--dataset "coco_json:$WORK/val.json:$C/images/val2017" --cfg "$CFG" --load_ckpt "$ckpt"
      --quiet --set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False NUM_GPUS "$NGPU")
echo "== c. test_net: one process, then --multi-gpu-testing"
python3 tools/test_net.py "${TEST[@]}" $EXTRA --output_dir "$WORK/test1" > "$OUT/test_one.log" 2>&1
echo "rc=$?"
python3 tools/test_net.py "${TEST[@]}" $EXTRA --multi-gpu-testing --output_dir "$WORK/testN" \
    > "$OUT/test_multi.log" 2>&1
echo "rc=$?"
python3 - "$OUT" "$WORK" <<'PY' | tee "$OUT/summary.txt"
import re, sys
import numpy as np
from pydetectron.utils.io import load_pickle_safe
out, work = sys.argv[1:3]
def losses(path):
    text = open(path).read()
    steps = [int(s) for s in re.findall(r'\[Step (\d+) / \d+\]', text)]
    vals = [float(v) for v in re.findall(r'loss: ([-\d.naninf]+), lr', text)]
    times = [float(v) for v in re.findall(r'time: ([\d.]+)', text)]
    return steps, vals, times
for name in ('dp', 'ddp'):
    s, v, t = losses('%s/train_%s.log' % (out, name))
    print('%-4s steps %s' % (name, ' '.join('%d:%.4f' % p for p in zip(s, v))))
    print('%-4s mean s/step (as printed) %s' % (name, '%.3f' % t[-1] if t else '-'))
def dets(d):
    return load_pickle_safe('%s/%s/detections.pkl' % (work, d))
try:
    a, b = dets('test1'), dets('testN')
    same, total = 0, 0
    for ca, cb in zip(a['all_boxes'], b['all_boxes']):
        for x, y in zip(ca, cb):
            total += 1
            same += (np.shape(x) == np.shape(y) and np.allclose(x, y, atol=1e-3))
    print('test_net one process vs --multi-gpu-testing: %d of %d (class, image) box lists equal'
          % (same, total))
except Exception as e:  # noqa: BLE001
    print('detections comparison failed: %s: %s' % (type(e).__name__, e))
PY
