#!/usr/bin/env bash
# One device call for the decode kernels (#11, #15): both CUDA libraries built, the W4 / NVFP4 GPU
# kernel tests, the tuned W4A16 + NVFP4 sweep at M <= 16 (its winners merged into sm90.json), ncu
# of the winning W4 config at gate_up M=1. Logs under $OUT (bench_table.txt, sm90.json, ncu.txt).
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_fp4 cuda_w8
step tests; timeout ${TESTS_S:-170} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_build.py tests/inference/kernels/test_cuda_fp4.py tests/inference/kernels/test_kernels.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -12
step bench; timeout ${BENCH_S:-200} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats ${FORMATS:-w4a16,nvfp4} \
  --ms ${MS:-1,4,16} --out "$OUT" 2>"$OUT/bench.log" | tee "$OUT/bench_table.txt" | grep -E "M=(1|16) |PASS|MISS"
tail -2 "$OUT/bench.log"
step ncu; ARGS=$(python3 -c "
import json; e = json.load(open('$OUT/sm90.json'))['layouts']['w4_t64x64']['shapes']['28672x4096']['1']
print('--split', e.get('SPLIT_K', 0), '--stages', e.get('STAGES', 4), '--variant', e.get('VARIANT', 0))" 2>/dev/null)
echo "ncu gate_up M=1 $ARGS"
timeout 60 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  python3 benchmarks/ncu_w4_decode.py --shape gate_up --m 1 $ARGS > "$OUT/ncu.txt" 2>&1
grep -E "Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible|Eligible Warps" "$OUT/ncu.txt" | head -12
step done
