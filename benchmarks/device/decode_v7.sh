#!/usr/bin/env bash
# Run 8's decode call: v7 with fewer instructions per stage (unpredicated x fragments, 32-bit ring
# addresses, one accumulator per group, M + z from z's bits: 176 -> 147 SASS instructions per stage
# at M = 1, group 128, sm_90a). Builds, the W4 decode GPU tests, the W4A16 tuner at M <= 16 (winners
# merged into $OUT/sm90.json and installed in this copy of the tree), ncu of the gate_up M = 1
# winner, then the 8B end to end for bf16 and W4A16 on that table. Logs under $OUT (one tarball
# with everything, and the tables on stdout); < 560 s. Run 8's second call (decode_v7.sh final)
# ran with TESTS=w4mm MS=1,16 and no ncu (NCU=0), to fit the session's last device minutes.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}  # w4.cu and w4_mma.cu take 60-140 s each on the device's 16 cores
step build; build_libs cuda_w4 cuda_w4mm cuda_w8
TESTS=${TESTS:-build}  # build: the W4 decode tests (test_cuda_build.py); w4mm: the multi-column kernel's
step tests; timeout ${TESTS_S:-120} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  $([ "$TESTS" = w4mm ] && echo tests/inference/kernels/test_cuda_w4mm.py || echo tests/inference/kernels/test_cuda_build.py) \
  > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -8
step tune; timeout ${BENCH_S:-150} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms ${MS:-1,4,16} \
  --out "$OUT" 2>"$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -1 "$OUT/tune.log"
[ -s "$OUT/sm90.json" ] && cp "$OUT/sm90.json" turbopack/inference/kernels/configs/sm90.json
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section ComputeWorkloadAnalysis"
for shape in $([ "${NCU:-1}" = 1 ] && echo gate_up qkv); do
  step "ncu $shape M=1"
  timeout 60 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 $SECTIONS \
    python3 benchmarks/ncu_linear.py --format w4a16 --shape $shape --m 1 > "$OUT/ncu_$shape.txt" 2>&1
  echo "rc=$?"; grep -E "rel err|Duration|DRAM Throughput|Issue Slots|Registers Per|Achieved Occ|Warp Cycles Per Issued" \
    "$OUT/ncu_$shape.txt" | head -8
done
step e2e; timeout ${E2E_S:-170} python3 benchmarks/bench_e2e.py --e2e --formats bf16,w4a16 --out "$OUT" \
  2>"$OUT/e2e.log" | tee "$OUT/e2e.txt" | head -40; tail -1 "$OUT/e2e.log"
# one tarball comes back whole (the device returns a limited number of files)
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
