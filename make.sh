#!/usr/bin/env bash
# pydetectron set-up, tests and quick start.
#   bash make.sh          install the Python dependencies (into this interpreter) and build the extension
#   bash make.sh test     the above, then the whole test suite (extra arguments go to pytest)
#   bash make.sh demo     the above, then the quick start on the built-in shapes dataset
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
PY=${PYTHON:-python3}
cmd=${1:-build}
[ $# -gt 0 ] && shift

log() { printf '[make.sh] %s\n' "$*"; }

install_deps() {
    # torch only when none is importable: never replace the user's torch (a CUDA build, say).
    if ! "$PY" -c "import torch" 2>/dev/null; then
        log "no torch importable: installing torch==2.13.0"
        "$PY" -m pip install -q "torch==2.13.0"
    fi
    local missing=()
    local pair mod pkg
    for pair in numpy:numpy yaml:pyyaml cv2:opencv-python-headless pycocotools:pycocotools \
                tensorboardX:tensorboardX matplotlib:matplotlib packaging:packaging tqdm:tqdm \
                pytest:pytest setuptools:setuptools ninja:ninja; do
        mod=${pair%%:*}; pkg=${pair#*:}
        "$PY" -c "import $mod" 2>/dev/null || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        "$PY" -m pip install -q "${missing[@]}"
    fi
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
        log "extension up to date"
    else
        log "building pydetectron._C"
        MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace
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
        || { log "the extension did not import"; exit 1; }
}

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
