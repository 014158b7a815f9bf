#!/usr/bin/env bash
# Run 30's last call: the warp-specialized W4A16 kernel (csrc/w4_wgws.cu, cuda_w4ws) on its first
# device: its GPU tests (the contract, one-hot tokens, determinism, a graph), then ws_probe.py (each
# tile at M = 256 and 2048 beside cuBLAS bf16). Only its library is built: carry .scratch/ws.tar.xz
# (build_libs.py --offline .scratch/ws 9.0 cuda_w4ws) and run with PREBUILT=.scratch/ws.tar.xz.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws
step "cuda_ws GPU tests"
timeout ${TESTS_S:-90} python3 -m pytest -m gpu -p no:cacheprovider -W ignore -x tests/inference/kernels/test_cuda_w4ws.py \
  > "$OUT/ws_tests.txt" 2>&1
echo "rc=$?"; grep -E "^FAILED|^ERROR|^E  |passed|failed" "$OUT/ws_tests.txt" | head -12
step ws_probe
timeout ${PROBE_S:-120} python3 benchmarks/device/ws_probe.py 2>&1 | tee "$OUT/ws_probe.txt" | cut -c1-250
step done
