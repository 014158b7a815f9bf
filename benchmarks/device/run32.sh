#!/usr/bin/env bash
# Run 32's first call, and run 33's (y stored through the idle ring, ws_store.cuh, first run; the
# gather in five instructions a word): the warp-specialized kernels' GPU tests (run 31's CLUSTER: the K slices summed in
# a cluster, x multicast removed; run 32's rings as deep as shared memory holds: W4 6 / 10 / 13 stages at
# 128 x 256 / 128 x 128 / 256 x 64, int8 4 / 7 / 9 at BM 256 / 128 / 64), then ws_probe at every tuner
# candidate of both (split-K through global planes and in a cluster, beside bf16, the Triton int8 GEMM
# and _int_mm), then knockout.py --only ws (run 31's knockouts and the epilogue left out: the int8
# skeleton split into stage handshakes and epilogue). Stops if the tests hang. Carry
# .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0) and .scratch/kows.tar.xz
# (knockout.py --offline .scratch/kows --only ws). Next: tune.sh, then PART=cli suite.sh.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_w4ws cuda_i8ws
step ws-tests
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w4ws.py \
  tests/inference/kernels/test_cuda_i8ws.py > "$OUT/ws_tests.txt" 2>&1
rc=$?; tail -3 "$OUT/ws_tests.txt"
# a failed test is reported and the probe still runs (it checks every config against the contract
# before timing it, and prints FAILED where one is wrong); a hang (rc 124) stops the call
if [ $rc -ne 0 ]; then grep -E "^FAILED|Error" "$OUT/ws_tests.txt" | head -20 | cut -c1-250; fi
if [ $rc -eq 124 ]; then step done; exit 1; fi
step ws_probe
timeout ${PROBE_S:-240} python3 benchmarks/device/ws_probe.py 2>&1 | tee "$OUT/ws_probe.txt" | grep -v "^   all" | cut -c1-250
step knockouts
timeout ${KO_S:-160} python3 benchmarks/device/knockout.py --libs .scratch/kows.tar.xz --only ws --out "$OUT/kows.json" 2>&1 \
  | grep -v '^{'
step done
