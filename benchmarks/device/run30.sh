#!/usr/bin/env bash
# Run 30's last call: the warp-specialized W4A16 kernel (csrc/w4_wgws.cu, cuda_w4ws) on its first
# device: its GPU tests (the contract, one-hot tokens, determinism, a graph), then ws_probe.py (each
# tile at M = 64, 256 and 2048 beside cuBLAS bf16), then ncu of it at gate_up M = 256. Only its library is built: carry .scratch/ws.tar.xz
# (build_libs.py --offline .scratch/ws 9.0 cuda_w4ws) and run with PREBUILT=.scratch/ws.tar.xz.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws
step "cuda_ws GPU tests"
timeout ${TESTS_S:-90} python3 -m pytest -m gpu -p no:cacheprovider -W ignore -x tests/inference/kernels/test_cuda_w4ws.py \
  > "$OUT/ws_tests.txt" 2>&1
rc=$?; echo "rc=$rc"; grep -E "^FAILED|^ERROR|^E  |passed|failed" "$OUT/ws_tests.txt" | head -12
# a failed or hung kernel stops the call here: timing or profiling it would only spend device time
if [ $rc -ne 0 ]; then tail -40 "$OUT/ws_tests.txt" | cut -c1-200; step done; exit 1; fi
step ws_probe
timeout ${PROBE_S:-120} python3 benchmarks/device/ws_probe.py 2>&1 | tee "$OUT/ws_probe.txt" | cut -c1-250
# where the new kernel's time goes at gate_up M = 256 (run 29 profiled cuda_wg and cuBLAS there)
step "ncu cuda_ws gate_up M=256"
timeout ${NCU_S:-100} ncu --clock-control none --kernel-name regex:w4_wgws_kernel --launch-skip 3 --launch-count 1 \
  $NCU_SECTIONS -o "$OUT/ws_gate_up_256" -f python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 256 \
  --cfg '{"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 1, "STAGES": 4}' > "$OUT/ncu_ws.log" 2>&1
echo "rc=$?"; ncu -i "$OUT/ws_gate_up_256.ncu-rep" 2>/dev/null | grep -E "$NCU_KEYS" | head -24
python3 benchmarks/device/ncu_source.py "$OUT/ws_gate_up_256.ncu-rep" --top 25 > "$OUT/ws_source.txt" 2>&1
echo "rc=$?"; sed -n 2,30p "$OUT/ws_source.txt" | cut -c1-160; rm -f "$OUT/ws_gate_up_256.ncu-rep"
step done
