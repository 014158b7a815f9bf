#!/usr/bin/env bash
# The dense W4A16 decode by rows (cuda_w4 VARIANT 4-6, csrc/w4_rows.cuh, w4_rowsx.cuh) in one call:
# - its GPU tests, the other decode variants' and the MoE kernels' (they share w4_feed.cuh now);
# - the 8B W4A16 step at batch 1 and 8 (bench_e2e --e2e --quick --fusion-ab; the shipped path is its
#   "attention" column) on the table before rows ($V7_TABLE, carried; none: skipped) and on the shipped one;
# - rows_ab.py: per layer of each family in $MODELS (the four bench.MODELS) at M = $MS (1,2,4,8), the
#   table's config against every rows config (tune.rows_candidates), chained from $START_TABLE (carried;
#   default the shipped one); the table with every rows win goes to $OUT/sm90.json;
# - the 8B step again on that table.
# Carry .scratch/prebuilt.tar.xz and .scratch/sm90_v7.json; < 480 s. stdout holds the summaries, the
# A/B tables go to $OUT/ab.md (a call returns few files: the logs stay in /tmp/rows).
#   bash benchmarks/device/rows.sh
#   V7_TABLE=none MS=1,2,4,8,16 MODELS=llama3-8b TESTS_K=rows NCU=1 bash benchmarks/device/rows.sh
#   V7_TABLE=none MS=1,2,4,8,16 MODELS="qwen3-8b gemma2-9b phi4-mini" TESTS_K=none \
#     START_TABLE=.scratch/sm90_call1.json bash benchmarks/device/rows.sh   # (each < 600 s)
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
T=turbopack/inference/kernels/configs/sm90.json
LOG=/tmp/rows; mkdir -p $LOG
cp $T $LOG/sm90_shipped.json
step build; build_libs > $LOG/build.log 2>&1; tail -1 $LOG/build.log
TESTS_K=${TESTS_K:-rows or v6_v7 or moe or grouped}
if [ "$TESTS_K" != none ]; then
  step tests
  timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
    tests/inference/kernels/test_cuda_moe.py tests/inference/test_moe_grouped.py -k "$TESTS_K" > "$OUT/tests.txt" 2>&1
  echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
fi
e2e() {
  step "8B W4A16 step, batch 1 and 8, $1 table"
  timeout ${E2E_S:-80} python3 benchmarks/bench_e2e.py --e2e --quick --fusion-ab --formats w4a16 --out $LOG/e2e_$1 \
    2> $LOG/e2e_$1.log | grep -E "^\| (w4a16|1|8) "; grep -iE "error|Traceback" $LOG/e2e_$1.log | head -3
}
V7_TABLE=${V7_TABLE:-.scratch/sm90_v7.json}
[ "$V7_TABLE" != none ] && { cp $V7_TABLE $T; e2e v7; }
cp ${START_TABLE:-$LOG/sm90_shipped.json} $T; e2e start
for m in ${MODELS:-llama3-8b qwen3-8b gemma2-9b phi4-mini}; do
  step "rows A/B, $m"
  echo "### $m" >> "$OUT/ab.md"
  timeout ${AB_S:-60} python3 benchmarks/device/rows_ab.py --model $m --ms ${MS:-1,2,4,8} --write-table --out $LOG/ab_$m \
    2> $LOG/ab_$m.log | grep -v "^|---" | tee $LOG/ab_$m.md >> "$OUT/ab.md"
  grep -E " / M=1 = |rows won" $LOG/ab_$m.md
  grep -E "FAILED|REJECTED" $LOG/ab_$m.log | head -3
  [ -f $LOG/ab_$m/sm90.json ] && cp $LOG/ab_$m/sm90.json $T
done
cp $T "$OUT/sm90.json"
e2e rows_all
cp $LOG/sm90_shipped.json $T
# NCU=1 (~80 s): why W4's rows read gate_up at ~73% of copy bandwidth where the 8-bit rows on wide
# slots read the same 59 MB (int8 down, 4096 x 14336) at 83-88% (run 16): DRAM throughput, issue,
# occupancy and stalls of each at M = 1, and of rows with x per stage at M = 16
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats"
ncu_one() {  # name kernel-regex format shape m cfg-json
  timeout 60 ncu --clock-control none --kernel-name regex:$2 --launch-skip 3 --launch-count 1 $SECTIONS \
    python3 benchmarks/ncu_linear.py --format $3 --shape $4 --m $5 --cfg "$6" > $LOG/ncu_$1.txt 2>&1
  echo "$1 rc=$?"; grep -E "rel err|Duration|DRAM Throughput|Issue Slots Busy|Registers Per|Achieved Occ|Warp Cycles Per Issued|No Eligible" \
    $LOG/ncu_$1.txt | head -9
}
if [ "${NCU:-0}" = 1 ]; then
  step ncu
  ncu_one w4_rows w4_rows w4a16 gate_up 1 '{"kernel": "cuda", "SPLIT_K": 8, "STAGES": 4, "VARIANT": 4}'
  ncu_one w4_rowsx w4_rowsx w4a16 gate_up 1 '{"kernel": "cuda", "SPLIT_K": 8, "STAGES": 4, "VARIANT": 6}'
  ncu_one w4_rowsx16 w4_rowsx w4a16 gate_up 16 '{"kernel": "cuda", "SPLIT_K": 8, "STAGES": 4, "VARIANT": 6}'
  ncu_one w8_wide w8_rows w8a16 down 1 '{"kernel": "cuda", "SPLIT_K": 8, "STAGES": 2, "VARIANT": 6}'
fi
step done
