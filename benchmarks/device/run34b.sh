#!/usr/bin/env bash
# Run 34's second call: ncu of the W4A16 warp-specialized kernel where it misses its bar. o at M = 64:
# split 1 took 29 us, 2 (cluster) 18, 4 (planes) 19 in run 33: ~18 us that more K slices do not
# shorten, with ~5 us of tensor work; qkv at M = 256: 96 CTAs on 132 SMs, ~13 us over its MMAs.
# Carry .scratch/prebuilt.tar.xz.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4ws
ncu_prof w4_o64 w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape o --m 64 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 64, "SPLIT_K": 2, "STAGES": 17, "CLUSTER": true}'
ncu_prof w4_qkv256 w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 2, "STAGES": 6, "CLUSTER": true}'
step done
