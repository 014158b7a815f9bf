#!/usr/bin/env bash
# Run 34's first call. The warp-specialized kernels' GPU tests: stream-K (STREAM, ws_stream.cuh),
# cuda_w8ws (W8A16 on int8 rows) and i8_wgws on e4m3 codes (FP8) on their first device, split-K by
# planes in the accumulators' own layout (ws_store.cuh store_sliced_rows); the GLU test that run 33's
# table broke (GLU_WARPS restored by bench_main._keep_glu). Then the tuner, each format set into its
# own folder over the previous one's table: W4A16 at M = 64 and 256 (stream-K's candidates beside the
# splits), W8A16 at 64, 256 and 2048 (cuda_w8ws beside the Triton kernel, 0.42-0.82x bf16 in run 33),
# W8A8 and FP8 at 64 and 256. $OUT/sm90.json: the last table. Carry .scratch/prebuilt.tar.xz.
# Next: run34b.sh (ncu), then PART=e2e bash benchmarks/device/tune.sh.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs
step ws-tests
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w8ws.py \
  tests/inference/kernels/test_cuda_w4ws.py tests/inference/kernels/test_cuda_i8ws.py tests/inference/kernels/test_cuda_fp8ws.py tests/inference/kernels/test_ws_stream.py \
  "tests/inference/test_moe_grouped.py::test_fastpath_mlp_glu_matches_three_launches_on_gpu" > "$OUT/ws_tests.txt" 2>&1
rc=$?; tail -3 "$OUT/ws_tests.txt"
if [ $rc -ne 0 ]; then grep -E "^FAILED|Error" "$OUT/ws_tests.txt" | head -20 | cut -c1-250; fi
if [ $rc -eq 124 ]; then step done; exit 1; fi
tune() {  # name, formats, ms: each into its own folder, the table carried to the next
  step "bench_linear --tune --formats $2 --ms $3"
  mkdir -p "$OUT/$1"
  timeout ${TUNE_S:-150} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats "$2" --ms "$3" \
    --out "$OUT/$1" > "$OUT/$1/tune.txt" 2>&1
  echo "rc=$?"; grep -E "^(w8a16|w4a16|w8a8|fp8) .*M=(64|256|2048) |MISS" "$OUT/$1/tune.txt" | cut -c1-190 | head -30
  # one table back (a call returns 8 files): the latest, which holds every earlier tune's winners
  [ -f "$OUT/$1/sm90.json" ] && mv "$OUT/$1/sm90.json" "$OUT/sm90.json" && cp "$OUT/sm90.json" turbopack/inference/kernels/configs/
}
# most valuable first (a short budget may cut the last): W4A16 with stream-K, W8A16's new kernel,
# then W8A8 and FP8 (the e4m3 kernel); $OUT/sm90.json holds every one that finished
tune w4 w4a16 64,256
tune w8 w8a16 64,256,2048
tune i8 w8a8,fp8 64,256
step done
