# Sourced by the GPU check scripts (run from the repo root): the set-up they share on the lent
# GPU machine.
#   ensure_pycocotools        pycocotools from the carried .whl/ when the interpreter lacks it,
#                             installed into /tmp/site, which goes on PYTHONPATH
#   build_cuda_extension LOG  pydetectron._C with its CUDA kernels, in place (log to LOG); prints
#                             the log's tail and returns 1 when the build fails
# PY (default python3) is the interpreter; TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100, H200).

ensure_pycocotools() {
    local py=${PY:-python3} whl
    "$py" -c "import pycocotools" 2> /dev/null && return 0
    whl=$(ls .whl/pycocotools-*.whl 2> /dev/null | head -n 1)
    if [ -z "$whl" ]; then echo "pycocotools is missing and .whl/ holds no wheel of it"; return 1; fi
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$whl" || return 1
    case ":${PYTHONPATH:-}:" in
        *:/tmp/site:*) ;;
        *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ;;
    esac
}

build_cuda_extension() {
    rm -f lib/pydetectron/_C*.so
    if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            FORCE_CUDA=1 "${PY:-python3}" setup.py build_ext --inplace > "$1" 2>&1; then
        tail -n 40 "$1"
        return 1
    fi
}
