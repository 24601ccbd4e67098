#!/usr/bin/env bash
# The GPU check, one entry point: on the lent GPU machine, in one device call, one shared set-up,
# then each MODE in the order given.
#
#   bash dev/gpu_check.sh MODE [MODE...]
#   CPU=1 bash dev/gpu_check.sh MODE [MODE...]     rehearsal on a CPU machine (no build)
#
# Modes (each one's body and its environment variables are in dev/gpu/MODE.sh):
#   build   the build's warnings, and a C++ argument check that must raise, not crash
#   tests   every CUDA-marked test: pytest tests -m cuda
#   ops     tests/ops one pytest process per file, then dev/benchmark_ops.py --device cuda
#           --profile (the ops table of BENCHMARK.md; GPU only)
#   train   Mask R-CNN and Keypoint R-CNN trained on coco_mini with tools/train_net_step.py, in
#           float32 and bfloat16, their loss curves side by side, then tools/test_net.py
#   perf    dev/benchmark.py once per entry of VARIANTS
#   ab      dev/benchmark_ab.py (paired timing) once per entry of AB
#   testnet dev/benchmark_test_net.py: test_net's path on real photos against torchvision's
#           evaluation loop, then against the older copies named in BASES; PROFILE entries:
#           dev/profile_test_net.py (its stages under torch.profiler)
#   trainnet dev/benchmark_train_net.py: tools/train_net_step.py on real photos against a
#           torchvision training loop (entries of TRAINNET); TRAINPROFILE entries:
#           dev/profile_train_net.py (a step's stages under torch.profiler)
#   multi   2+ GPUs: DataParallel against DistributedDataParallel training, test_net in one
#           process against --multi-gpu-testing
#   recompiles dev/count_recompiles.py: --compile's compilations and step times over 200 real
#           training steps at 800 / 1333 (entries of RECOMPILES)
#
# The shared set-up (dev/gpu/setup.sh): pycocotools (and pytest) from the carried .whl/ when the
# interpreter lacks them; coco_mini from the carried .gpu_data/coco_mini (else
# ../shared/data/coco_mini); the machine's description; pydetectron._C built in place with its
# CUDA kernels, once for all the modes (CPU=1: the extension already in lib/ is used).
# Before a device call, here: echo /.gpu_data/ >> .git/info/exclude; mkdir -p .gpu_data;
# cp -r ../shared/data/coco_mini .gpu_data/; then run with carry [".gpu_data", ".whl"].
# Logs go to $OUT (default /tmp/gpu_check), scratch files to $WORK (default /tmp/gpu_check_work,
# emptied first). The exit status is the first failing mode's. PACK=FILE.tgz: $OUT packed into
# that one file after each mode and every 20 s (a device call brings back at most 8 files, and
# nothing that a command killed at its time limit had not yet written): in a device call,
# OUT=/tmp/o PACK=$OUT/logs.tgz bash dev/gpu_check.sh ...
set -uo pipefail
MODES="build tests ops train perf ab testnet trainnet multi recompiles"
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
if [ $# -eq 0 ]; then usage >&2; echo "gpu_check.sh: give at least one MODE among: $MODES" >&2; exit 2; fi
for m in "$@"; do
    case " $MODES -h --help " in
        *" $m "*) ;;
        *) echo "gpu_check.sh: unknown mode '$m'; expected one of: $MODES" >&2; exit 2 ;;
    esac
    if [ "$m" = -h ] || [ "$m" = --help ]; then usage; exit 0; fi
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_check}
WORK=${WORK:-/tmp/gpu_check_work}
CPU=${CPU:-0}
export PYTHONUNBUFFERED=1
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
# shellcheck source=dev/gpu/setup.sh
. dev/gpu/setup.sh
DEVICE_FLAG=
[ "$CPU" = 1 ] && DEVICE_FLAG=--no_cuda

ensure_wheels || exit 1
{
    [ "$CPU" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv,noheader
    "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$OUT/machine.txt"
if [ "$CPU" = 1 ]; then
    BUILD="skipped (CPU=1: the extension in lib/ as it is)"
else
    stamp "build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
    start=$(date +%s)
    build_cuda_extension "$OUT/build.log" || { echo "BUILD FAILED (see $OUT/build.log)"; exit 1; }
    BUILD="ok in $(( $(date +%s) - start )) s"
fi
echo "built: $BUILD"
_on_pythonpath "$ROOT/lib"
export ROOT OUT WORK CPU PY DEVICE_FLAG BUILD T0

status=0
summary=""
pack() {
    [ -n "${PACK:-}" ] || return 0
    local tmp="/tmp/gpu_check_pack_$BASHPID.tgz"
    tar czf "$tmp" -C "$OUT" . 2>/dev/null && cp "$tmp" "$PACK.part" && mv "$PACK.part" "$PACK"
    rm -f "$tmp"
}
PACKER=
if [ -n "${PACK:-}" ]; then
    ( while sleep 20; do pack; done ) > /dev/null 2>&1 &
    PACKER=$!
fi
for m in "$@"; do
    stamp "mode $m"
    ( . "dev/gpu/$m.sh" )
    rc=$?
    summary="$summary $m=$rc"
    [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
    pack
done
stamp "done:$summary"
if [ -n "$PACKER" ]; then pkill -P "$PACKER" 2> /dev/null; kill "$PACKER" 2> /dev/null; fi
pack
exit $status
