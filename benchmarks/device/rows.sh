#!/usr/bin/env bash
# The dense W4A16 decode by rows (cuda_w4 VARIANT 4, cuda_moe.rows_decode) in one call:
# - its GPU tests and the MoE kernels' (the down-by-token kernel it shares now reads no ids or
#   weights where they are null);
# - rows_ab.py: per 8B layer at M = 1, 2, the shipped table's config against every rows config,
#   and $OUT/sm90.json, the table with rows wherever it won at M = 1;
# - the 8B W4A16 batch-1 step (bench_e2e --e2e --quick) on the shipped table, then on that one.
# Carry .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0). Logs under $OUT;
# < 420 s.
#   bash benchmarks/device/rows.sh
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step tests
timeout ${TESTS_S:-120} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_cuda_moe.py -k "rows or decode_kernel_matches or cuda_grouped or few_token" \
  > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
step "rows A/B per layer"
timeout ${AB_S:-120} python3 benchmarks/device/rows_ab.py --write-table --out "$OUT" 2> "$OUT/rows_ab.log" \
  | tee "$OUT/rows_ab.txt"
tail -2 "$OUT/rows_ab.log"
for table in shipped rows; do
  step "8B W4A16 batch-1 step, $table table"
  [ "$table" = rows ] && [ -f "$OUT/sm90.json" ] && cp "$OUT/sm90.json" turbopack/inference/kernels/configs/sm90.json
  timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT/e2e_$table" \
    2> "$OUT/e2e_$table.log" | tee "$OUT/e2e_$table.txt" | grep -E "^\| (bf16|w4a16) "; tail -1 "$OUT/e2e_$table.log"
done
git checkout -q turbopack/inference/kernels/configs/sm90.json 2>/dev/null
step done
