#!/usr/bin/env bash
# Run 29's first call: the MoE after the one-launch layer's removal (moe_w4.cu back to 50f5ff5's
# kernels: its GPU tests, bench_moe's default and it without PDL at T = 1 and 64), then what limits
# the two M = 256 misses of issue 11, instruction by instruction (ncu's source page, ncu_source.py:
# stalls and executed instructions by opcode and by how often a line ran): W4A16 gate_up through
# the shipped `cuda_wg` (1.66-2.14x bf16 at M = 256 on the H100, run 28) and W8A8 qkv through the
# Triton int8 GEMM (0.94-1.33x bf16, bar 1.3x), and cuBLAS bf16 at gate_up's shape
# beside them. Carry .scratch/prebuilt.tar.xz (rebuilt for this tree). Under 400 s.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs
step "MoE GPU tests"
timeout ${TESTS_S:-120} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_moe.py tests/inference/test_moe_grouped.py > "$OUT/moe_tests.txt" 2>&1
echo "rc=$?"; grep -E "^FAILED|^ERROR|passed|failed" "$OUT/moe_tests.txt" | tail -6
step "bench_moe T=1,64: the default and it without PDL"
timeout ${MOE_S:-120} python3 benchmarks/bench_moe.py --tokens 1,64 --no-sweep --cuda-head 2 --log "$OUT/moe_cands.txt" \
  > "$OUT/moe.txt" 2> "$OUT/moe.log"; echo "rc=$?"; grep -E " us$" "$OUT/moe_cands.txt" | cut -c1-40,300-; tail -8 "$OUT/moe.txt"
prof() {  # name, kernel regex, ncu_linear.py's arguments: ncu's limits and its source page, summed
  local name=$1 regex=$2; shift 2
  step "ncu $name"
  timeout ${NCU_S:-100} ncu --clock-control none --kernel-name "regex:$regex" --launch-skip 3 --launch-count 1 \
    $NCU_SECTIONS -o "$OUT/$name" -f python3 benchmarks/ncu_linear.py "$@" > "$OUT/ncu_$name.log" 2>&1
  echo "rc=$?"; ncu -i "$OUT/$name.ncu-rep" 2>/dev/null | grep -E "$NCU_KEYS" | head -24
  python3 benchmarks/device/ncu_source.py "$OUT/$name.ncu-rep" --top 25 > "$OUT/${name}_source.txt" 2>&1
  echo "rc=$?"; sed -n 2,40p "$OUT/${name}_source.txt" | cut -c1-160
  rm -f "$OUT/$name.source.csv"
}
prof wg_gate_up_256 w4_wgmma --format w4a16 --shape gate_up --m 256
# the peer at the same shape (cuBLAS bf16, 1.8x faster): its shared-memory, L2 and tensor-pipe figures
# beside ours say which of them the mixed-input kernel runs out of first
step "ncu cuBLAS bf16 gate_up M=256"
timeout ${NCU_S:-100} ncu --clock-control none --launch-skip 3 --launch-count 1 $NCU_SECTIONS python3 -c "
import torch
x = torch.randn(256, 4096, device='cuda', dtype=torch.bfloat16)
w = torch.randn(28672, 4096, device='cuda', dtype=torch.bfloat16)
for _ in range(5): torch.nn.functional.linear(x, w)
torch.cuda.synchronize()" > "$OUT/ncu_bf16_gate_up_256.txt" 2>&1
echo "rc=$?"; grep -E "^  [a-z_]|$NCU_KEYS" "$OUT/ncu_bf16_gate_up_256.txt" | head -28
prof i8_qkv_256 i8_mm_kernel --format w8a8 --shape qkv --m 256
step done
