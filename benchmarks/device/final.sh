#!/usr/bin/env bash
# A session's last device call on the final tree: the whole -m gpu suite (the kernel files that a
# decode.sh call of the same tree ran may be skipped with SKIP_KERNEL_TESTS=1, all but the named
# re-checks), the MoE grouped kernel benchmark, GPTQ/AWQ calibration memory, the warm start and
# the 8B end-to-end decode. Logs under $OUT.
source benchmarks/device/lib.sh
skip=()
if [[ -n "${SKIP_KERNEL_TESTS:-}" ]]; then
  skip=(--deselect tests/inference/kernels/test_cuda_build.py --deselect tests/inference/kernels/test_cuda_fp4.py
        --deselect tests/inference/kernels/test_cuda_w8.py)
fi
step gpu-tests; timeout ${TESTS_S:-270} python3 -m pytest -q -m gpu tests -p no:cacheprovider "${skip[@]}" \
  ${RECHECK:+$RECHECK} > "$OUT/gpu_tests.txt" 2>&1; echo "rc=$?"; grep -E "FAILED|passed|failed" "$OUT/gpu_tests.txt" | tail -8
[[ -f benchmarks/bench_moe.py ]] && { step moe; timeout ${MOE_S:-90} python3 benchmarks/bench_moe.py 2>"$OUT/moe.log" | tee "$OUT/moe.md" | tail -8; tail -3 "$OUT/moe.log"; }
step calibration; timeout ${CALIB_S:-80} python3 benchmarks/calibration_gpu.py --layers 1 --methods ${CALIB_METHODS:-gptq,awq} \
  --out "$OUT" 2>"$OUT/calib.log" | tail -4
step startup; M=turbopack/assets/tiny-llama; W=$(mktemp -d)
python3 -m turbopack quantize $M -o $W/q --format w4a16 --group-size 64 2>/dev/null && python3 -m turbopack pack $W/q --arch sm90 -o $W/p 2>/dev/null
for i in 1 2 3; do s=$(date +%s.%N); python3 -m turbopack run $W/p --prompt "ROMEO:" --max-new-tokens 1 >/dev/null 2>&1; echo "run $i rc=$?: $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s"; done
for i in 1 2; do s=$(date +%s.%N); python3 -c "import torch; torch.zeros(1, device='cuda')"; echo "import torch + CUDA context: $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s"; done
step e2e; timeout ${E2E_S:-220} python3 benchmarks/bench_e2e.py --e2e --out "$OUT" 2>"$OUT/e2e.log" | grep -E "^\| (bf16|w4a16|w8a16|fp8|w8a8|int8|int4) \||W4A16 / bf16" | head -16
tail -2 "$OUT/e2e.log"
step done
