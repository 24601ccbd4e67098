#!/usr/bin/env bash
# pydetectron set-up, tests and quick start.
#   bash make.sh          install the dependencies (into this interpreter) and build the extension
#   bash make.sh test     the above, then the whole test suite (extra arguments go to pytest)
#   bash make.sh demo     the above, then the quick start on the built-in shapes dataset
#
# The interpreter is $PYTHON, else python3 (an activated virtual environment's, for example).
# Every dependency comes from requirements.txt, the project's one list. A torch that is already
# importable is never replaced (a CUDA build, say); without one, pip installs the newest torch the
# list allows. Each step prints one line; the compiler's and pip's full output go to
# build/make.log, whose tail is shown when a step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
PY=${PYTHON:-python3}
cmd=${1:-build}
[ $# -gt 0 ] && shift
LOG=build/make.log

log() { printf '[make.sh] %s\n' "$*"; }

# step DESCRIPTION COMMAND...: runs COMMAND with its output appended to $LOG; one line on success,
# the log's tail and its path on failure.
step() {
    local what=$1; shift
    local t0=$SECONDS
    printf '\n===== %s: %s\n' "$what" "$*" >> "$LOG"
    if "$@" >> "$LOG" 2>&1; then
        log "$what ($((SECONDS - t0)) s)"
    else
        local rc=$?
        log "$what FAILED (exit $rc); the last lines of $LOG:"
        tail -n 40 "$LOG" | sed 's/^/    /' >&2
        log "full output: $ROOT/$LOG"
        exit "$rc"
    fi
}

install_deps() {
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null \
        || { log "$PY is not a Python >= 3.9 interpreter"; exit 1; }
    # requirements.txt's runtime, build and test sections (not the optional dev one), without the
    # torch line when a torch is already importable
    local reqs=build/requirements.txt keep_torch=1
    "$PY" -c "import torch" 2>/dev/null && keep_torch=0
    awk -v keep_torch=$keep_torch '
        /^# \[/ { section = substr($0, 4, index($0, "]") - 4); next }
        /^#/ || NF == 0 { next }
        section == "dev" { next }
        /^torch([<>=!~ ]|$)/ && !keep_torch { next }
        { print }' requirements.txt > "$reqs"
    step "dependencies from requirements.txt" \
        "$PY" -m pip install --disable-pip-version-check -r "$reqs"
}

ext_is_fresh() {
    # The extension is up to date when it is newer than every kernel source and setup.py.
    local so
    so=$(ls lib/pydetectron/_C*.so 2>/dev/null | head -n 1) || true
    [ -n "$so" ] || return 1
    [ -z "$(find lib/pydetectron/ops/csrc setup.py -newer "$so" -type f 2>/dev/null | head -n 1)" ]
}

build() {
    if ext_is_fresh && [ "${FORCE_REBUILD:-0}" != "1" ]; then
        log "extension pydetectron._C up to date"
    else
        local kinds="CPU kernels"
        "$PY" -c "import torch, sys; from torch.utils.cpp_extension import CUDA_HOME
sys.exit(not (torch.version.cuda and CUDA_HOME and torch.cuda.is_available()))" 2>/dev/null \
            || [ "${FORCE_CUDA:-0}" = "1" ] && kinds="CPU and CUDA kernels"
        export MAX_JOBS=${MAX_JOBS:-$(nproc)}
        step "extension pydetectron._C built ($kinds)" "$PY" setup.py build_ext --inplace
    fi
    # Make `import pydetectron` work from anywhere: a .pth file pointing at lib/ (a develop
    # install without pip's isolated build environment, which would download another torch).
    local site
    site=$("$PY" -c "import site, sys; print(site.getsitepackages()[0] if hasattr(site, 'getsitepackages') else sys.prefix)")
    if [ -w "$site" ]; then
        echo "$ROOT/lib" > "$site/pydetectron.pth"
    else
        site=$("$PY" -m site --user-site); mkdir -p "$site"; echo "$ROOT/lib" > "$site/pydetectron.pth"
    fi
    "$PY" -c "import pydetectron, pydetectron.ops as o; o.extension_available() or exit(1)" \
        || { log "the extension did not import (build log: $ROOT/$LOG)"; exit 1; }
}

mkdir -p build
: > "$LOG"
case "$cmd" in
    build|"")
        install_deps; build ;;
    test)
        install_deps; build
        set +e
        "$PY" -m pytest tests "$@"
        rc=$?
        set -e
        # pytest's exit 5 (no test collected) is a failure for us too: a suite must run.
        exit $rc ;;
    demo)
        install_deps; build
        exec bash demo/run_demo.sh "$@" ;;
    *)
        echo "usage: bash make.sh [build|test|demo]" >&2; exit 2 ;;
esac
