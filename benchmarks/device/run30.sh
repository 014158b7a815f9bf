#!/usr/bin/env bash
# Run 30: the two warp-specialized kernels on their first device: cuda_w4ws (csrc/w4_wgws.cu, W4A16)
# and cuda_i8ws (csrc/i8_wgws.cu, W8A8 int8 through tensor-map copies). Their GPU tests (the contract,
# exact one-hot / integer cases, determinism, a graph, dispatch) first; a failure stops the call.
# Then ws_probe.py (each tile beside cuBLAS bf16, and for W8A8 beside the Triton int8 GEMM and
# torch._int_mm; with split-K and CLUSTER), then ncu of both (the W4 one with its source page). Carry .scratch/prebuilt.tar.xz
# (build_libs.py --offline .scratch/prebuilt 9.0). Shorter: PROBE_ONLY=w8a8 (or w4a16), NCU=0.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws cuda_i8ws
step "GPU tests"
timeout ${TESTS_S:-150} python3 -m pytest -m gpu -p no:cacheprovider -W ignore -x tests/inference/kernels/test_cuda_i8ws.py \
  tests/inference/kernels/test_cuda_w4ws.py > "$OUT/ws_tests.txt" 2>&1
rc=$?; echo "rc=$rc"; grep -E "^FAILED|^ERROR|^E  |passed|failed" "$OUT/ws_tests.txt" | head -12
# a failed or hung kernel stops the call here: timing or profiling it would only spend device time
if [ $rc -ne 0 ]; then tail -40 "$OUT/ws_tests.txt" | cut -c1-200; step done; exit 1; fi
step ws_probe
timeout ${PROBE_S:-200} python3 benchmarks/device/ws_probe.py ${PROBE_ONLY:+--only $PROBE_ONLY} 2>&1 | tee "$OUT/ws_probe.txt" | cut -c1-250
[ "${NCU:-1}" = 0 ] && { step done; exit 0; }
# where the kernels' time goes: cuda_ws (W4) at gate_up M = 256 with its source page (which
# instructions its warps stall on: run 30 found 81% of cycles without an eligible warp), and the int8
# kernel at gate_up M = 2048 with CLUSTER (run 30: 0.97 us a stage without it, L2-bound)
step "ncu cuda_ws gate_up M=256"
timeout ${NCU_S:-80} ncu --clock-control none --kernel-name regex:w4_wgws_kernel --launch-skip 3 --launch-count 1 \
  $NCU_SECTIONS -o "$OUT/ws" -f python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 1, "STAGES": 4}' > "$OUT/ncu_ws.log" 2>&1
echo "rc=$?"; ncu -i "$OUT/ws.ncu-rep" 2>/dev/null | grep -E "$NCU_KEYS" | head -24
python3 benchmarks/device/ncu_source.py "$OUT/ws.ncu-rep" --top 30 > "$OUT/ws_source.txt" 2>&1
echo "rc=$?"; sed -n 2,40p "$OUT/ws_source.txt" | cut -c1-160; rm -f "$OUT/ws.ncu-rep" "$OUT/ws.source.csv"
step "ncu cuda_ws (w8a8) gate_up M=2048 CLUSTER"
timeout ${NCU_S:-80} ncu --clock-control none --kernel-name regex:i8_wgws_kernel --launch-skip 3 --launch-count 1 \
  $NCU_SECTIONS python3 benchmarks/ncu_linear.py --format w8a8 --shape gate_up --m 2048 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 1, "STAGES": 4, "CLUSTER": true}' > "$OUT/ncu_i8.txt" 2>&1
echo "rc=$?"; grep -E "$NCU_KEYS" "$OUT/ncu_i8.txt" | head -24
step done
