#!/usr/bin/env bash
# ncu of the W4A16 warp-specialized kernel where it still misses its bar after run 34: qkv at M = 256,
# 28.2 us with stream-K (STREAM; 132 CTAs, runs of 23-24 stages) against 28.8 with split 2 in a
# cluster (96 CTAs, 32 stages each) and bf16's 23.3 (H100). Per-stage tensor time predicts ~4 us
# less for stream-K than it gained: is it the heads' plane reads (up to 3 x 128 KB a CTA), the wait
# for the slices, or the copies? Both configs side by side, then o at M = 256 (stream-K lost there).
# Carry .scratch/prebuilt.tar.xz.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4ws
ncu_prof w4_qkv256_stream w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "STAGES": 5, "STREAM": true}'
ncu_prof w4_qkv256_split w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 2, "STAGES": 6, "CLUSTER": true}'
ncu_prof w4_o256_stream w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape o --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 128, "STAGES": 9, "STREAM": true}'
step done
