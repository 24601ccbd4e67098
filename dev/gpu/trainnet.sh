# Mode "trainnet" of dev/gpu_check.sh: dev/benchmark_train_net.py -- tools/train_net_step.py
# itself on coco_mini train2017 photos at 800 / 1333 against a torchvision training loop on the
# same images: frozen-BN Mask R-CNN R-50-FPN at batch 2 (two rounds), at batch 8, both in bf16
# (--amp) at batch 8, then the GroupNorm scratch config at batch 2 (paired with the same frozen-BN
# torchvision loop: torchvision has no GroupNorm Mask R-CNN). Logs: $OUT/trainnet_<i>.log and
# .json. Environment: TRAINNET (entries of benchmark_train_net.py arguments separated by ';'; no
# spaces inside one argument), TRAINNET_TIMEOUT (s per entry, 420).
# CPU=1: one tiny entry at scale 200; the torchvision half only with PYDETECTRON_TV_SHIM=1 (and
# PYTHONPATH holding a torchvision: dev/tv_cpu_shim.py's stand-in ops, a rehearsal, no numbers).
GN_CFG=configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml
if [ "$CPU" = 1 ]; then
    IMPL=ours
    [ "${PYDETECTRON_TV_SHIM:-0}" = 1 ] && IMPL=ours,torchvision
    TRAINNET=${TRAINNET:---device cpu --impl $IMPL --rounds 1 --steps 6 --short 3 --warmup 1 --scale 200 --max-size 333 --nw 1}
fi
TRAINNET=${TRAINNET:---bs 2 --rounds 2;--bs 8 --rounds 1 --steps 64 --short 16;--bs 8 --amp --rounds 1 --steps 64 --short 16;--bs 2 --rounds 1 --cfg $GN_CFG --label ours_GN}
trainnet_one() {   # $1 index, $2 arguments
    json_entry trainnet dev/benchmark_train_net.py "${TRAINNET_TIMEOUT:-420}" "$1" "$2"
}
for_each_entry "$TRAINNET" trainnet_one
