# Sourced by dev/gpu_check.sh (from the repo root): the set-up every mode shares on the lent GPU
# machine, and the helpers the modes call.
#   ensure_wheels             pycocotools (and pytest with its two dependencies, when the
#                             interpreter lacks it) from the carried .whl/, installed into
#                             /tmp/site, which goes on PYTHONPATH
#   find_coco_mini            COCO: .gpu_data/coco_mini (carried) or ../shared/data/coco_mini, and
#                             the link the tests look for at ../shared/data/coco_mini
#   build_cuda_extension LOG  pydetectron._C with its CUDA kernels, in place (log to LOG); prints
#                             the log's tail and returns 1 when the build fails
#   val_subset JSON OUT N     the first N images of a COCO json (and their annotations) into OUT
#   for_each_entry LIST FN    FN I ENTRY for each ';'-separated entry of LIST
#   json_entry NAME SCRIPT SECONDS I ARGS
#                             "$PY" SCRIPT ARGS --json $OUT/NAME_I.json, its output in
#                             $OUT/NAME_I.log; prints the status and the log's JSON lines
#   stamp TEXT                "== [seconds since the start] TEXT"
# PY (default python3) is the interpreter; TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100, H200).

PY=${PYTHON:-python3}
T0=${T0:-$(date +%s)}

stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

_on_pythonpath() {
    case ":${PYTHONPATH:-}:" in
        *:"$1":*) ;;
        *) export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH} ;;
    esac
}

_install_wheels() {   # wheel files -> /tmp/site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$@" || return 1
    _on_pythonpath /tmp/site
}

ensure_wheels() {
    local whl
    if ! "$PY" -c "import pycocotools" 2> /dev/null; then
        whl=$(ls .whl/pycocotools-*.whl 2> /dev/null | head -n 1)
        if [ -z "$whl" ]; then echo "pycocotools is missing and .whl/ holds no wheel of it"; return 1; fi
        _install_wheels "$whl" || return 1
    fi
    if ! "$PY" -c "import pytest" 2> /dev/null && ls .whl/pytest-*.whl > /dev/null 2>&1; then
        _install_wheels .whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl || return 1
    fi
}

find_coco_mini() {
    COCO=${COCO:-.gpu_data/coco_mini}
    [ -d "$COCO" ] || COCO=../shared/data/coco_mini
    if [ ! -d "$COCO/annotations" ]; then echo "coco_mini not found (.gpu_data/coco_mini)"; return 1; fi
    # the tests find coco_mini at ../shared/data/coco_mini
    if [ ! -e ../shared/data/coco_mini ] && [ "$COCO" != ../shared/data/coco_mini ]; then
        mkdir -p ../shared/data && ln -s "$PWD/$COCO" ../shared/data/coco_mini
    fi
    export COCO
}

build_cuda_extension() {
    rm -f lib/pydetectron/_C*.so
    if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            FORCE_CUDA=1 "$PY" setup.py build_ext --inplace > "$1" 2>&1; then
        tail -n 40 "$1"
        return 1
    fi
}

val_subset() {
    "$PY" dev/gpu/val_subset.py "$@"
}

for_each_entry() {   # LIST FUNCTION: FUNCTION I ENTRY for each ';'-separated entry of LIST (I from
                     # 1); returns the last non-zero status of FUNCTION, else 0
    local entries entry i=0 rc status=0
    IFS=';' read -r -a entries <<< "$1"
    for entry in "${entries[@]}"; do
        i=$((i + 1))
        "$2" "$i" "$entry"
        rc=$?
        [ $rc -ne 0 ] && status=$rc
    done
    return $status
}

json_entry() {   # NAME SCRIPT SECONDS I ARGS (see the header); returns SCRIPT's status
    local name=$1 script=$2 limit=$3 i=$4 args=$5 rc
    echo "== $name $i: $args"
    # shellcheck disable=SC2086
    timeout "$limit" "$PY" "$script" $args --json "$OUT/${name}_$i.json" \
        > "$OUT/${name}_$i.log" 2>&1
    rc=$?
    echo "rc=$rc"
    grep '^{' "$OUT/${name}_$i.log" || tail -n 30 "$OUT/${name}_$i.log"
    return $rc
}
