#!/usr/bin/env bash
# Run 32's second call: knockout.py --only ws (run 31's knockouts and the epilogue left out), then ncu
# of both warp-specialized kernels at qkv M = 256 (the W8A8 miss: 96 CTAs of 128 x 128 stream ~100 MB
# from L2 in ~20 us, near its bandwidth?). Carry .scratch/prebuilt.tar.xz and .scratch/kows.tar.xz.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws cuda_i8ws
step knockouts
timeout ${KO_S:-160} python3 benchmarks/device/knockout.py --libs .scratch/kows.tar.xz --only ws --out "$OUT/kows.json" 2>&1 \
  | grep -v '^{'
ncu_prof i8_qkv256 i8_wgws_kernel python3 benchmarks/ncu_linear.py --format w8a8 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 128, "SPLIT_K": 1, "STAGES": 7}'
ncu_prof w4_qkv256 w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 128, "SPLIT_K": 1, "STAGES": 10}'
step done
