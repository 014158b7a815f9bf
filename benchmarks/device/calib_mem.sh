#!/usr/bin/env bash
# Issue 10's calibration memory bar on one H200: the GPU tests of GPTQ's memory work, then
# benchmarks/calibration_gpu.py --layers 1 (8B layer shapes, 128 x 2048 tokens) for GPTQ with and
# without act-order, AWQ and SmoothQuant (time and peak GPU memory against the 3.02 GB bar), then
# GPTQ once more with --breakdown: the allocations alive at its peak. Logs under $OUT; < 300 s.
# Usage (on the device, repo root): bash benchmarks/device/calib_mem.sh
source benchmarks/device/lib.sh
export TURBOPACK_CACHE=/tmp/turbopack-cache
step env; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print(torch.__version__, torch.version.cuda)"
step tests
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/packer/calibration/test_gptq_memory.py \
  tests/packer/calibration/test_pipeline.py -W ignore > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -12
step "calibration_gpu --layers 1"
timeout 160 python3 benchmarks/calibration_gpu.py --layers 1 --methods gptq,gptq-no-act-order,awq,smoothquant \
  --out "$OUT" 2> "$OUT/calibration_gpu.log" | tee "$OUT/calibration_gpu.txt"
echo "rc=${PIPESTATUS[0]}"; grep -E "^\{\"hidden|Error|error" "$OUT/calibration_gpu.log" | tail -4
step "breakdown at GPTQ's peak (act-order; 32 samples: the peak does not depend on them, the time does)"
timeout 75 python3 benchmarks/calibration_gpu.py --layers 1 --methods gptq --samples 32 --breakdown \
  --out "$OUT/breakdown" 2> "$OUT/breakdown.log" | tee "$OUT/breakdown.txt"
echo "rc=${PIPESTATUS[0]}"; grep -E "Error|error" "$OUT/breakdown.log" | tail -4
step done
