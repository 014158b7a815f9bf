#!/usr/bin/env bash
# Run 23's second call (after run22.sh found x staged slower): the 128-byte ring slots against the
# shipped build (x per stage both), x staged again, bench_e2e --quick at the defaults, the MoE's defaults at
# T = 1 and 64, ncu's per-line stalls of o at M = 1 with x per stage (0) and staged (1). Logs under $OUT.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_moe
step ab
timeout 200 python3 benchmarks/device/build_ab.py --libs .scratch/ab.tar.xz --names slot128,x-staged --same-bits slot128 --reps ${AB_REPS:-3} 2> "$OUT/ab2.log" | tee "$OUT/ab2.txt" | tail -7
step e2e
timeout 60 python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"; grep -E "^\| (bf16|w4a16)|bar" "$OUT/e2e.txt"
step moe
timeout ${MOE_S:-120} python3 benchmarks/bench_moe.py --tokens 1,64 --no-sweep > "$OUT/moe.txt" 2> "$OUT/moe.log"; echo rc=$?; tail -12 "$OUT/moe.txt"
cfg() { echo "{\"kernel\": \"cuda\", \"SPLIT_K\": $1, \"STAGES\": 4, \"VARIANT\": 6, \"GLU_WARPS\": 16}"; }
for sx in 0 1; do step "ncu o sx=$sx"
TURBOPACK_W4_STAGE_X=$sx timeout 60 ncu --clock-control none --kernel-name regex:rows --launch-skip 3 --launch-count 1 --section SourceCounters --section WarpStateStats --section SpeedOfLight -o "$OUT/src_o$sx" python3 benchmarks/ncu_linear.py --shape o --m 1 --cfg "$(cfg 8)" > "$OUT/src_o$sx.log" 2>&1; echo rc=$?
python3 benchmarks/device/ncu_source.py "$OUT/src_o$sx.ncu-rep" --top 30 > "$OUT/src_o$sx.txt" 2>&1; head -40 "$OUT/src_o$sx.txt" | cut -c1-150; done
step done
