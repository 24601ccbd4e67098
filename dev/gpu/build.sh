# Mode "build" of dev/gpu_check.sh (sourced in a subshell after the shared set-up, which built the
# extension): the build's own warnings, then a C++ argument check that must raise a Python
# RuntimeError, not crash the process (with cuda-gdb's backtrace when it crashes).
echo "build: $BUILD"
[ -f "$OUT/build.log" ] && grep -iE "warning|spill" "$OUT/build.log" | grep -v "c10/\|ATen/\|torch/" | head -n 20
echo "== a C++ argument check must raise, not crash"
THROW='import torch, pydetectron.ops as o
try:
    torch.ops.pydetectron.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
except RuntimeError as e:
    print("raised:", str(e).splitlines()[0])'
if ! "$PY" -X faulthandler -c "$THROW" > "$OUT/throw.log" 2>&1; then
    echo "CRASHED: see throw.log / throw_bt.log"; tail -n 5 "$OUT/throw.log"
    if command -v cuda-gdb > /dev/null; then
        timeout 120 cuda-gdb -batch -ex run -ex bt --args "$PY" -c "$THROW" > "$OUT/throw_bt.log" 2>&1
        grep -E "^#" "$OUT/throw_bt.log" | head -n 25
    fi
    exit 1
fi
cat "$OUT/throw.log"
grep -q "^raised:" "$OUT/throw.log"
