#!/usr/bin/env bash
# Run 32's first call: the warp-specialized kernels' GPU tests (run 31's CLUSTER: the K slices summed in
# a cluster; x multicast removed), then ws_probe at every tuner candidate of both (split-K through
# global planes and in a cluster, beside bf16, the Triton int8 GEMM and _int_mm), then the rest of the
# -m gpu suite outside tests/cli. Stops on a hang or a failed warp-specialized test. Carry
# .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0). Next: PART=cli suite.sh,
# then tune.sh on an H200.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs
step ws-tests
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w4ws.py \
  tests/inference/kernels/test_cuda_i8ws.py > "$OUT/ws_tests.txt" 2>&1
rc=$?; tail -3 "$OUT/ws_tests.txt"
if [ $rc -ne 0 ]; then grep -E "^FAILED|Error" "$OUT/ws_tests.txt" | head -20 | cut -c1-250; step done; exit 1; fi
step ws_probe
timeout ${PROBE_S:-240} python3 benchmarks/device/ws_probe.py 2>&1 | tee "$OUT/ws_probe.txt" | grep -v "^   all" | cut -c1-250
step gpu-tests
timeout ${TESTS_S:-300} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  > "$OUT/gpu_tests_rest.txt" 2>&1
echo "tests (all but tests/cli) rc=$?"; grep -E "^FAILED|^ERROR" "$OUT/gpu_tests_rest.txt" | head -8
step done
