# Mode "tests" of dev/gpu_check.sh: every CUDA-marked test (`pytest tests -m cuda`; on CPU=1 they
# are all skipped, which rehearses the collection). Log: $OUT/pytest_cuda.log.
# Environment: T_TESTS (seconds, 200), T_PATHS (the test files or folders, default tests).
find_coco_mini || exit 1
timeout "${T_TESTS:-200}" "$PY" -m pytest ${T_PATHS:-tests} -m cuda -q -rfEs -p no:randomly \
    > "$OUT/pytest_cuda.log" 2>&1
rc=$?
echo "pytest rc=$rc $(tail -n 1 "$OUT/pytest_cuda.log")"
grep -E "^(FAILED|ERROR)|Fatal|Segmentation" "$OUT/pytest_cuda.log" | head -n 20
exit $rc
