# Mode "ops" of dev/gpu_check.sh (GPU only): the ops tests, one pytest process per file so that a
# crash stays in its file, then the op benchmark against torchvision.ops (BENCHMARK.md's ops
# table). Logs: $OUT/pytest_ops.log, $OUT/bench_ops.log, $OUT/bench_ops_cuda.json.
if [ "$CPU" = 1 ]; then
    echo "ops: needs a GPU (on the CPU: python3 dev/benchmark_ops.py --device cpu)"; exit 0
fi
test_rc=0
: > "$OUT/pytest_ops.log"
for f in tests/ops/test_*.py; do
    "$PY" -m pytest "$f" -q -rfEs -p no:randomly >> "$OUT/pytest_ops.log" 2>&1
    rc=$?
    echo "$f: rc=$rc $(tail -n 1 "$OUT/pytest_ops.log")"
    [ $rc -ne 0 ] && test_rc=$rc
done
grep -E "^(FAILED|ERROR)|Fatal|Error" "$OUT/pytest_ops.log" | head -n 30
echo "== op benchmark"
"$PY" dev/benchmark_ops.py --device cuda --profile --out "$OUT/bench_ops_cuda.json" 2>&1 \
    | tee "$OUT/bench_ops.log"
exit "$test_rc"
