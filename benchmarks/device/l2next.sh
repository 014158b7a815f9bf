#!/usr/bin/env bash
# The next linear's bytes to L2 (cuda_w4.NEXT_L2_BYTES, csrc/common.cuh L2Next), the MoE's down to L2
# (MoECudaConfig.l2_down) and the attention's live splits (attention.LIVE_SPLITS) in one call:
# - their GPU tests, the rows-with-x and MoE few-token tests beside them, the attention and fast-path
#   tests;
# - l2_next_ab.py: the 8B W4A16 step at batch 1 and 8 over NEXT_L2_BYTES ($MB MiB) x NEXT_L2_CTAS
#   ($CTAS), off first and last, and with every attention split running; kernel profiles;
# - bench_moe.py at T = $TOKENS (1,2), the few-token candidates with and without l2_down.
# Carry .scratch/prebuilt.tar.xz; < 540 s.
#   bash benchmarks/device/l2next.sh
#   MB=8,16 CTAS=0 TOKENS=1 TESTS_K=none bash benchmarks/device/l2next.sh
source benchmarks/device/lib.sh
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
TESTS_K=${TESTS_K:-next_linear or rows_with_x_per_stage_matches or l2 or h_per_stage or attention or decode_kernel or captured}
if [ "$TESTS_K" != none ]; then
  step tests
  timeout ${TESTS_S:-200} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
    tests/inference/kernels/test_cuda_build.py tests/inference/kernels/test_cuda_moe.py \
    tests/inference/test_kv_quant.py tests/inference/test_fastpath.py -k "$TESTS_K" > "$OUT/tests.txt" 2>&1
  echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
fi
step "8B step A/B"
timeout ${AB_S:-200} python3 benchmarks/device/l2_next_ab.py --mb ${MB:-4,8,16,32} --ctas ${CTAS:-0,528} \
  2> "$OUT/ab.log" | tee "$OUT/ab.txt" | grep -v "^{"; grep -iE "error|Traceback" "$OUT/ab.log" | head -3
step "MoE, T = ${TOKENS:-1,2}"
timeout ${BENCH_S:-120} python3 benchmarks/bench_moe.py --tokens ${TOKENS:-1,2} --no-triton-sweep --log "$OUT/sweep.txt" \
  2>"$OUT/bench.log" | tee "$OUT/bench_moe.txt"; echo "bench rc=${PIPESTATUS[0]}"
python3 - "$OUT/sweep.txt" <<'PY'
import re, sys
best, t = {}, "?"
for line in open(sys.argv[1]):  # the best CUDA time per (T, l2_down, pdl_gate_up, gate_up_by_pair)
    if line.startswith("T="):
        t = line.split(":")[0][2:]
    m = re.search(r", ([0-9.]+) us$", line.rstrip())
    if m and line.lstrip().startswith("cuda"):
        key = (t, "l2_down=True" in line, "pdl_gate_up=True" in line, "gate_up_by_pair=True" in line)
        if key not in best or float(m.group(1)) < best[key][0]:
            best[key] = (float(m.group(1)), line.strip()[:170])
for k in sorted(best):
    print(f"T={k[0]} l2_down={k[1]} pdl_gu={k[2]} by_pair={k[3]}: {best[k][0]:.1f} us  {best[k][1]}")
PY
step done
