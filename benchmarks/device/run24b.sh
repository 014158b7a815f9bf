#!/usr/bin/env bash
# Run 24's second call: the routed MoE kernels with x per stage (MoECudaConfig.x_per_stage on
# the routed gate_up and down) and with down's sum over top-k in a launch of its own (combine)
# through the MoE's GPU tests, then bench_moe's CUDA sweep at T = 1 and 64 (the routed candidates
# with and without each beside the default), then the 8B W4 step alternating the shipped build,
# t1280 (the rows' 8-warp CTAs at one token column under a 48-register cap: 5 CTAs an SM,
# -DTP_ROWSX_THREADS1=1280) and two tables (glu8: gate|up's GLU in 8 warps; d16: down in 16); last
# the rest of the -m gpu suite (all but tests/cli). Carry .scratch/prebuilt.tar.xz,
# .scratch/ab.tar.xz and .scratch/tables. Under 580 s.
source benchmarks/device/lib.sh
step build; build_libs
step "MoE GPU tests"
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_moe.py tests/inference/kernels/test_moe_w4.py > "$OUT/moe_tests.txt" 2>&1
echo "rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/moe_tests.txt" | tail -12
step "bench_moe --tokens 1,64 --no-triton-sweep"
timeout ${SWEEP_S:-170} python3 benchmarks/bench_moe.py --tokens 1,64 --no-triton-sweep --log "$OUT/sweep.txt" \
  > "$OUT/moe_sweep.txt" 2>> "$OUT/sweep.txt"
echo "rc=$?"; grep -E "^\| (1|64) |^T=" "$OUT/moe_sweep.txt"; tail -2 "$OUT/sweep.txt"
python3 - "$OUT/sweep.txt" <<'PY'  # per T: the best routed config with and without x per stage
import re, sys
best, t = {}, None
for line in open(sys.argv[1]):
    if line.startswith("T="):
        t = line.split(":")[0]
    m = re.search(r"(?i)cuda (MoECudaConfig\(.*\)): rel err .*, ([0-9.]+) us$", line)
    if m and "gate_up_by_pair=False" in m[1] and "down_by_token=False" in m[1]:
        key = (t, "x_per_stage=True" in m[1], "combine=True" in m[1])
        if key not in best or float(m[2]) < best[key][0]:
            best[key] = (float(m[2]), m[1])
for (t, xq, comb), (us, cfg) in sorted(best.items()):
    print(f"{t} routed, x per stage {xq}, combine {comb}: {us:.1f} us  {cfg}")
PY
step "build_ab t1280, glu8, d16"
timeout ${AB_S:-170} python3 benchmarks/device/build_ab.py --libs .scratch/ab.tar.xz --names t1280 --same-bits t1280 \
  --table glu8=shipped:.scratch/tables/glu8.json --table d16=shipped:.scratch/tables/d16.json --reps ${AB_REPS:-2} \
  2> "$OUT/ab_w4.log" | tee "$OUT/ab_w4.txt" | grep -E "same bits|mean"
echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/ab_w4.log"
step "the rest of the -m gpu suite (not tests/cli)"
timeout ${REST_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  --ignore=tests/inference/kernels/test_cuda_moe.py --ignore=tests/inference/kernels/test_moe_w4.py \
  > "$OUT/gpu_rest.txt" 2>&1
echo "rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_rest.txt" | tail -8
step done
