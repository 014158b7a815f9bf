#!/usr/bin/env bash
# Run 34's first call: the warp-specialized kernels' GPU tests (cuda_w8ws, W8A16 on int8 rows, on its
# first device; cuda_w4ws and cuda_i8ws as shipped), the GLU test that run 33's table broke (GLU_WARPS
# restored by bench_main._keep_glu), the tuner for W8A16 from M = 64 (cuda_w8ws beside the Triton
# kernel that ran there at 0.42-0.82x bf16's speed), then ncu of the W4A16 kernel where it misses
# its bar: o at M = 64 (split 1: 29 us, 2: 18 us, 4: 19 us in run 33, so ~18 us that the K slices do
# not shorten) and qkv at M = 256 (96 CTAs on 132 SMs). Carry .scratch/prebuilt.tar.xz. Next: copy
# $OUT/sm90.json into configs/, then PART=e2e bash benchmarks/device/tune.sh (W8A16's prefill).
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs
step ws-tests
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w8ws.py \
  tests/inference/kernels/test_cuda_w4ws.py tests/inference/kernels/test_cuda_i8ws.py \
  "tests/inference/test_moe_grouped.py::test_fastpath_mlp_glu_matches_three_launches_on_gpu" > "$OUT/ws_tests.txt" 2>&1
rc=$?; tail -3 "$OUT/ws_tests.txt"
if [ $rc -ne 0 ]; then grep -E "^FAILED|Error" "$OUT/ws_tests.txt" | head -20 | cut -c1-250; fi
if [ $rc -eq 124 ]; then step done; exit 1; fi
step "bench_linear --tune --formats w8a16 --ms 64,256,2048"
timeout ${TUNE_S:-240} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w8a16 --ms 64,256,2048 \
  --out "$OUT" > "$OUT/tune.txt" 2> "$OUT/tune.log"
echo "rc=$?"; tail -2 "$OUT/tune.log"; grep -E "^w8a16|MISS|PASS" "$OUT/tune.txt" | cut -c1-200 | head -30
ncu_prof w4_o64 w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape o --m 64 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 64, "SPLIT_K": 2, "STAGES": 17, "CLUSTER": true}'
ncu_prof w4_qkv256 w4_wgws_kernel python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 2, "STAGES": 6, "CLUSTER": true}'
step done
