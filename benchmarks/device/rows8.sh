#!/usr/bin/env bash
# The 8-bit decode by rows (cuda_w8 VARIANT 4, w8_rows_kernel in csrc/w8.cu) in one call:
# - its GPU tests and the split-K kernel's (test_cuda_w8.py);
# - the 8B bf16, W8A16 and FP8 steps at batch 1 (bench_e2e --e2e --quick) on the table before rows
#   ($BASE_TABLE, carried: .scratch/sm90_pre_w8rows.json, 3f41ac6's) and on the shipped one;
# - rows_ab.py for W8A16 and FP8: per layer of each family in $MODELS at M = $MS, the shipped
#   table's config against every rows config; each run's table with the rows wins feeds the next,
#   and the last goes to $OUT/sm90.json;
# - the same steps on that table.
# stdout holds the summaries; the A/B tables go to $OUT/ab.md and the step tables to $OUT/e2e.md (a
# call returns few files: the logs stay in /tmp/rows8). Carry .scratch/prebuilt.tar.xz and
# .scratch/sm90_pre_w8rows.json; < 360 s.
#   bash benchmarks/device/rows8.sh
#   MODELS="llama3-8b" MS=1 bash benchmarks/device/rows8.sh
#   AB_FORMATS="w8a16 w8a8" FORMATS=bf16,w8a16,w8a8 BASE_TABLE=none bash benchmarks/device/rows8.sh
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
T=turbopack/inference/kernels/configs/sm90.json
LOG=/tmp/rows8; mkdir -p $LOG
cp $T $LOG/sm90_shipped.json
step build; build_libs cuda_w8 > $LOG/build.log 2>&1; tail -1 $LOG/build.log
step tests
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w8.py \
  > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
e2e() {
  step "8B W8A16 and FP8 steps, batch 1, $1 table"
  echo "### $1 table" >> "$OUT/e2e.md"
  timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats ${FORMATS:-bf16,w8a16,fp8} --out $LOG/e2e_$1 \
    2> $LOG/e2e_$1.log | grep -E "^\| (model|bf16|w8a16|fp8) " | tee -a "$OUT/e2e.md"
  grep -iE "error|Traceback" $LOG/e2e_$1.log | head -3
}
BASE=${BASE_TABLE:-.scratch/sm90_pre_w8rows.json}
if [ -f "$BASE" ]; then cp "$BASE" $T; e2e base; cp $LOG/sm90_shipped.json $T; fi
e2e shipped
for f in ${AB_FORMATS:-w8a16 fp8}; do
  for m in ${MODELS:-llama3-8b qwen3-8b gemma2-9b phi4-mini}; do
    step "rows A/B, $f, $m"
    echo "### $f, $m" >> "$OUT/ab.md"
    timeout ${AB_S:-60} python3 benchmarks/device/rows_ab.py --format $f --model $m --ms ${MS:-1,4,8,16} --write-table \
      --out $LOG/ab_${f}_$m 2> $LOG/ab_${f}_$m.log | grep -v "^|---" >> "$OUT/ab.md"
    tail -1 "$OUT/ab.md"; grep -E "FAILED|REJECTED" $LOG/ab_${f}_$m.log | head -3
    [ -f $LOG/ab_${f}_$m/sm90.json ] && cp $LOG/ab_${f}_$m/sm90.json $T
  done
done
cp $T "$OUT/sm90.json"
e2e rows
cp $LOG/sm90_shipped.json $T
step done
