#!/usr/bin/env bash
# One device call of ncu on the kernels furthest from their bars (issue 11, 14): the multi-column
# W4 kernel (cuda_mm) at M = 64 on the four 8B shapes, the W4 decode (v7) at M = 1 on gate_up and
# qkv, the grouped MoE kernels at T = 1. Each profile is of the config the shipped table (or the
# MoE rule) runs, checked against the reference first. Logs under $OUT (one ncu report each, and
# the key metrics on stdout); under 400 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_w4mm cuda_moe
for shape in qkv o gate_up down; do
  ncu_prof "cuda_mm_${shape}_m64" w4_mma python3 benchmarks/ncu_linear.py --format w4a16 --shape $shape --m 64
done
ncu_prof v7_gate_up_m1 w4_decode python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 1
ncu_prof v7_qkv_m1 w4_decode python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 1
step "ncu moe T=1"; timeout 70 ncu --clock-control none --kernel-name regex:moe_ --launch-skip 2 --launch-count 2 \
  $NCU_SECTIONS python3 benchmarks/ncu_moe.py --tokens 1 > "$OUT/ncu_moe_t1.txt" 2>&1
echo "rc=$?"; grep -E "moe_|$NCU_KEYS" "$OUT/ncu_moe_t1.txt" | head -28
step done
