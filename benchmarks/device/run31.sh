#!/usr/bin/env bash
# Run 31's first call, one call so a lost machine costs nothing between steps: the whole -m gpu suite
# outside tests/cli (run 30's kernels, store_planes, the int8 kernel's CLUSTER and PDL have not run
# on a device), then, if the warp-specialized kernels' tests passed, ws_probe.py's W8A8 part (split-K,
# CLUSTER, PDL beside the Triton int8 GEMM, _int_mm and bf16). Under 560 s. Carry
# .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0). Next: PART=cli suite.sh,
# then tune.sh on an H200.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs
step gpu-tests
timeout ${TESTS_S:-330} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  > "$OUT/gpu_tests_rest.txt" 2>&1
rc=$?; echo "tests (all but tests/cli) rc=$rc"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_rest.txt" | tail -8
# a hang (timeout's 124) or a failed warp-specialized kernel: the probe would only repeat it
if [ $rc -eq 124 ] || grep -qE "^FAILED tests/inference/kernels/test_cuda_(i8|w4)ws" "$OUT/gpu_tests_rest.txt"; then
  tail -30 "$OUT/gpu_tests_rest.txt" | cut -c1-200; step done; exit 1
fi
step "ws_probe --only w8a8"
timeout ${PROBE_S:-150} python3 benchmarks/device/ws_probe.py --only w8a8 2>&1 | tee "$OUT/ws_probe.txt" | cut -c1-250
step done
