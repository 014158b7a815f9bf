#!/usr/bin/env bash
# One device call for the session's new kernels: all five CUDA libraries built in parallel; the GPU
# tests of the W4 multi-column kernel (w4_mma.cu), the grouped MoE decode (moe_w4.cu), the dense W4
# decode after the shared-stage refactor and GPTQ's memory work; bench_moe.py (both MoE paths swept
# against the loop of dense W4 calls); the tuner at M = 64 and 256 for W4A16 (cuda_mm among the
# candidates; winners in $OUT/sm90.json); the 8B end to end for bf16 and W4A16 with PDL's one-sided
# A/B. Logs under $OUT; under 560 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_moe cuda_w4mm cuda_fp4 cuda_w8
step tests; timeout ${TESTS_S:-120} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_w4mm.py tests/inference/kernels/test_cuda_moe.py tests/inference/kernels/test_moe_w4.py \
  tests/packer/calibration/test_gptq_memory.py tests/inference/kernels/test_cuda_build.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -15
step moe; timeout ${MOE_S:-130} python3 benchmarks/bench_moe.py --tokens ${TOKENS:-1,64} --log "$OUT/sweep.txt" \
  2>"$OUT/moe.log" | tee "$OUT/bench_moe.txt" | tail -14; tail -2 "$OUT/moe.log"
step tune; timeout ${TUNE_S:-140} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms 64,256 \
  --out "$OUT" 2>"$OUT/tune.log" | grep -E "M=(64|256) " | head -8
tail -2 "$OUT/tune.log"
python3 - "$OUT/bench.json" <<'PY'
import json, sys  # the best cuda_mm config beside the winner, per shape and M
for r in json.load(open(sys.argv[1]))["rows"]:
    mm = r.get("best_by_kernel", {}).get("cuda_mm", [float("nan"), None])
    print(f"{r['shape']} M={r['m']} win {r['cfg']['kernel']} {r['us']:.1f}us | cuda_mm {mm[0]:.1f}us {mm[1]} | "
          f"bf16 {r['peers'].get('bf16', float('nan')):.1f} tinygemm {r['peers'].get('tinygemm', float('nan')):.1f}")
PY
step e2e; timeout ${E2E_S:-80} python3 benchmarks/bench_e2e.py --e2e --formats bf16,w4a16 --out "$OUT" 2>"$OUT/e2e.log" \
  | grep -E "^\| (bf16|w4a16) \||off / on" -A3 | head -12; tail -1 "$OUT/e2e.log"
step done
