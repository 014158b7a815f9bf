#!/usr/bin/env bash
# Prepared in run 24 for the next session's first call, on an H200 (run 24 got only H100s): the 8B
# step against bf16 with the aligned ring slots (bench_e2e --quick), gate|up's GLU in 8 warps against
# the shipped table's 16 in the step (build_ab.py --table; 1.4% / 2.6% faster on the H100), and the
# MoE's new routed default (x per stage, combine) at T = 1 and 64 (bench_moe --no-sweep). Logs under
# $OUT; carry .scratch/prebuilt.tar.xz and .scratch/tables (table_variant.py .scratch/tables/glu8.json
# 28672x4096@1,8:GLU_WARPS=8). Under 400 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_moe
step "bench_e2e --e2e --quick (bf16, w4a16)"
timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
echo "rc=$?"; grep -E "copy bandwidth|^\| (bf16|w4a16) |bar" "$OUT/e2e.txt"
step "build_ab --table glu8"
timeout ${AB_S:-130} python3 benchmarks/device/build_ab.py --table glu8=shipped:.scratch/tables/glu8.json \
  --reps ${AB_REPS:-3} 2> "$OUT/ab_w4.log" | tee "$OUT/ab_w4.txt" | grep -E "mean"
echo "rc=${PIPESTATUS[0]}"; tail -2 "$OUT/ab_w4.log"
step "bench_moe --tokens 1,64 --no-sweep"
timeout ${MOE_S:-100} python3 benchmarks/bench_moe.py --tokens 1,64 --no-sweep > "$OUT/moe.txt" 2> "$OUT/moe.log"
echo "rc=$?"; grep -E "^\| (1|64) " "$OUT/moe.txt"
step done
