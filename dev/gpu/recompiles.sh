# Mode "recompiles" of dev/gpu_check.sh: dev/count_recompiles.py -- training steps of Mask R-CNN
# R-50-FPN (frozen BN, random weights) on coco_mini train2017 photos at 800 / 1333, batch 2, the
# body compiled by Inductor as --compile MODE compiles it: the graphs compiled, the recompiles and
# their reasons, the distinct blob shapes (with and without SHAPE_BUCKETS) and the step times,
# against the same steps uncompiled and the tools' options before issue 19 (--automatic).
# Logs: $OUT/recompiles_<i>.log and .json. Environment: RECOMPILES (entries of
# count_recompiles.py arguments separated by ';'), RECOMPILES_TIMEOUT (s per entry, 480).
if [ "$CPU" = 1 ]; then
    RECOMPILES=${RECOMPILES:---device cpu --backend eager --steps 4 --scale 320 --max-size 533 --nw 1}
fi
RECOMPILES=${RECOMPILES:---compile off --steps 200;--compile default --steps 200;--compile reduce-overhead --steps 200;--compile default --automatic --steps 200}
recompiles_one() {   # $1 index, $2 arguments
    json_entry recompiles dev/count_recompiles.py "${RECOMPILES_TIMEOUT:-480}" "$1" "$2"
}
for_each_entry "$RECOMPILES" recompiles_one
