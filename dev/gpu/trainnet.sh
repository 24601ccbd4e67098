# Mode "trainnet" of dev/gpu_check.sh: dev/benchmark_train_net.py -- tools/train_net_step.py
# itself on coco_mini train2017 photos at 800 / 1333 against a torchvision training loop on the
# same images: frozen-BN Mask R-CNN R-50-FPN at batch 2 (two rounds), at batch 8, both in bf16
# (--amp) at batch 8, then the GroupNorm scratch config at batch 2 (paired with torchvision's
# parts put together as the same GroupNorm Mask R-CNN: --tv-model auto). Logs:
# $OUT/trainnet_<i>.log and .json; then, for each entry of TRAINPROFILE
# (dev/profile_train_net.py arguments, ';'-separated, "-" for none), train_net_step.py's steps under torch.profiler ($OUT/trainprofile_<i>/summary.json,
# ops.txt, trace.json.gz). Environment: TRAINNET (entries of benchmark_train_net.py arguments
# separated by ';'; no spaces inside one argument; "-" for none), TRAINNET_TIMEOUT (s per entry,
# 420), TREES (other copies of the project for entries with --tree DIR: this build's
# pydetectron._C is copied into each DIR/lib/pydetectron first).
# CPU=1: one tiny entry at scale 200; the torchvision half only with PYDETECTRON_TV_SHIM=1 (and
# PYTHONPATH holding a torchvision: dev/tv_cpu_shim.py's stand-in ops, a rehearsal, no numbers).
GN_CFG=configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml
if [ "$CPU" = 1 ]; then
    IMPL=ours
    [ "${PYDETECTRON_TV_SHIM:-0}" = 1 ] && IMPL=ours,torchvision
    TRAINNET=${TRAINNET:---device cpu --impl $IMPL --rounds 1 --steps 6 --short 3 --warmup 1 --scale 200 --max-size 333 --nw 1}
fi
TRAINNET=${TRAINNET:---bs 2 --rounds 2;--bs 8 --rounds 1 --steps 64 --short 16;--bs 8 --amp --rounds 1 --steps 64 --short 16;--bs 2 --rounds 1 --cfg $GN_CFG --label ours_GN}
for t in ${TREES:-}; do
    cp lib/pydetectron/_C*.so "$t/lib/pydetectron/" || exit 1
done
trainnet_one() {   # $1 index, $2 arguments
    json_entry trainnet dev/benchmark_train_net.py "${TRAINNET_TIMEOUT:-420}" "$1" "$2"
}
status=0
if [ "$TRAINNET" != - ]; then
    for_each_entry "$TRAINNET" trainnet_one || status=$?
fi
trainprofile_one() {   # $1 index, $2 arguments
    local args=$2 rc
    [ "$args" = - ] && args=
    echo "== trainnet profile $1: $args"
    # shellcheck disable=SC2086
    timeout "${TRAINNET_TIMEOUT:-420}" "$PY" dev/profile_train_net.py --out "$OUT/trainprofile_$1" \
        $args > "$OUT/trainprofile_$1.log" 2>&1
    rc=$?
    grep -A8 '"wall_ms_per_step"' "$OUT/trainprofile_$1.log" \
        || tail -n 30 "$OUT/trainprofile_$1.log"
    return $rc
}
if [ -n "${TRAINPROFILE:-}" ]; then
    for_each_entry "$TRAINPROFILE" trainprofile_one || status=$?
fi
exit $status
