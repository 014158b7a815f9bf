#!/usr/bin/env bash
# ncu of the W4 decode by rows with x per stage (VARIANT 6) at M = 1 on the 8B's two large layers, as
# the shipped table runs them: gate|up's GLU in 16 warps, down in 8. Each is checked against the
# reference first (ncu_linear.py). Logs under $OUT (one ncu report each, key lines on stdout).
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
cfg() { echo "{\"kernel\": \"cuda\", \"SPLIT_K\": $1, \"STAGES\": 4, \"VARIANT\": 6, \"GLU_WARPS\": 16}"; }
ncu_prof glu_v6 rows python3 benchmarks/ncu_linear.py --shape gate_up --m 1 --glu --cfg "$(cfg 16)"
ncu_prof down_v6 rows python3 benchmarks/ncu_linear.py --shape down --m 1 --cfg "$(cfg 8)"
step done
