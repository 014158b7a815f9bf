#!/usr/bin/env bash
# Run 31's knockout call: the warp-specialized kernels' GPU tests on this source (the W4 producer now a
# warp with hoisted addresses, split-K's sum pipelined), then knockout.py --only ws (copies, decode,
# wgmmas left out one at a time), then ws_probe's W8A8 part (the splits). Carry .scratch/ws.tar.xz (build_libs.py --offline .scratch/ws 9.0 cuda_w4ws cuda_i8ws) and
# .scratch/kows.tar.xz (knockout.py --offline .scratch/kows --only ws).
source benchmarks/device/lib.sh
PREBUILT=.scratch/ws.tar.xz
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws cuda_i8ws
step ws-tests
timeout 70 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w4ws.py \
  tests/inference/kernels/test_cuda_i8ws.py > "$OUT/ws_tests.txt" 2>&1
rc=$?; tail -3 "$OUT/ws_tests.txt"; [ $rc -ne 0 ] && { grep -E "^FAILED" "$OUT/ws_tests.txt" | head; exit 1; }
step knockouts
timeout ${KO_S:-160} python3 benchmarks/device/knockout.py --libs .scratch/kows.tar.xz --only ws --out "$OUT/kows.json" 2>&1 \
  | grep -v '^{'
step "ws_probe --only w8a8 (split-K's sum pipelined)"
timeout ${PROBE_S:-80} python3 benchmarks/device/ws_probe.py --only w8a8 2>&1 | tee "$OUT/ws_probe.txt" | cut -c1-250
step done
