#!/usr/bin/env bash
# Run 24's first call: run24.sh's steps (the MoE's 128-byte slots against the shipped build,
# bench_e2e --quick with the dense rows' aligned slots, the MoE's defaults), then the MoE's CUDA
# sweep at T = 1 and 64 (bench_moe --no-triton-sweep) and ncu of both MoE kernels at T = 64 and 1
# (each kernel's share of the layer, its DRAM throughput and stalls). Logs under $OUT; carry
# .scratch/prebuilt.tar.xz and .scratch/ab.tar.xz. Under 560 s.
source benchmarks/device/lib.sh
AB_S=${AB_S:-150} E2E_S=${E2E_S:-100} MOE_S=${MOE_S:-70} bash benchmarks/device/run24.sh
step "bench_moe --tokens 1,64 --no-triton-sweep"
timeout ${SWEEP_S:-150} python3 benchmarks/bench_moe.py --tokens 1,64 --no-triton-sweep --log "$OUT/sweep.txt" \
  > "$OUT/moe_sweep.txt" 2> "$OUT/moe_sweep.log"
echo "rc=$?"; grep -E "^\| (1|64) " "$OUT/moe_sweep.txt"; tail -2 "$OUT/moe_sweep.log"
for t in 64 1; do
  step "ncu moe T=$t"
  timeout ${NCU_S:-45} ncu --clock-control none --kernel-name regex:moe_ --launch-skip 2 --launch-count 2 \
    $NCU_SECTIONS python3 benchmarks/ncu_moe.py --tokens $t > "$OUT/ncu_moe$t.txt" 2>&1
  echo "rc=$?"; grep -E "moe_.*kernel|$NCU_KEYS" "$OUT/ncu_moe$t.txt" | head -44
done
step done
