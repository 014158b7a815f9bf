#!/usr/bin/env bash
# Prepared in run 23 for the next session's first call: the MoE few-token kernels' ring slots on
# 128-byte rows (-DTP_MOE_SLOT_ALIGN=128, built here: build_ab.py --src moe_w4.cu --offline .scratch/ab
# moe128=TP_MOE_SLOT_ALIGN=128) against the shipped build, the same bits at T = 1 and 64 then the layer
# alternating them; then bench_e2e --quick (bf16, w4a16) with the dense rows' aligned slots, and the
# MoE's defaults (bench_moe --no-sweep). Logs under $OUT; carry .scratch/prebuilt.tar.xz and
# .scratch/ab.tar.xz.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_moe
step "build_ab --src moe_w4.cu ${AB_NAMES:=moe128}"
timeout ${AB_S:-200} python3 benchmarks/device/build_ab.py --src moe_w4.cu --libs .scratch/ab.tar.xz --names "$AB_NAMES" \
  --same-bits "$AB_NAMES" --reps ${AB_REPS:-3} 2> "$OUT/ab_moe.log" | tee "$OUT/ab_moe.txt" | tail -8
echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/ab_moe.log"
step "bench_e2e --e2e --quick (bf16, w4a16)"
timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
echo "rc=$?"; grep -E "copy bandwidth|^\| (bf16|w4a16) |bar" "$OUT/e2e.txt"
step "bench_moe --tokens 1,64 --no-sweep"
timeout ${MOE_S:-120} python3 benchmarks/bench_moe.py --tokens 1,64 --no-sweep > "$OUT/moe.txt" 2> "$OUT/moe.log"
echo "rc=$?"; grep -E "^\| (1|64) " "$OUT/moe.txt"
step done
