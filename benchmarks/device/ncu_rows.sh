#!/usr/bin/env bash
# ncu of the W4 decode by rows at M = 1 on the 8B's two large layers: gate|up's GLU in VARIANT 6 (the
# table's 16 warps) and 7 (persistent), down in VARIANT 6 at rings 4 and 8. Each is checked against
# the reference first (ncu_linear.py). Logs under $OUT (one ncu report each, key lines on stdout).
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
cfg() { echo "{\"kernel\": \"cuda\", \"SPLIT_K\": $1, \"STAGES\": $2, \"VARIANT\": $3, \"GLU_WARPS\": 16}"; }
ncu_prof glu_v6 rows python3 benchmarks/ncu_linear.py --shape gate_up --m 1 --glu --cfg "$(cfg 16 4 6)"
ncu_prof glu_v7 rows python3 benchmarks/ncu_linear.py --shape gate_up --m 1 --glu --cfg "$(cfg 16 4 7)"
ncu_prof down_v6 rows python3 benchmarks/ncu_linear.py --shape down --m 1 --cfg "$(cfg 8 4 6)"
ncu_prof down_v6_ring8 rows python3 benchmarks/ncu_linear.py --shape down --m 1 --cfg "$(cfg 8 8 6)"
step done
