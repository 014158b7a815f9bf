"""The CUDA C++ decode kernel compiles with this machine's nvcc for sm_80 and sm_90a (CI has no
GPU, so this is a compile check; the gpu test runs it against the reference)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from turbopack.inference.kernels import cuda_w4

NVCC = cuda_w4.nvcc()


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("cap", [(8, 0), (9, 0)])
def test_decode_kernel_compiles(cap, tmp_path):
    cmd = [NVCC, "-c", "-O3", "-std=c++17", cuda_w4.gencode(cap), str(cuda_w4.SRC), "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "k.o").stat().st_size > 0


def test_gencode_targets_hopper_arch_specific():
    assert cuda_w4.gencode((9, 0)) == "-gencode=arch=compute_90a,code=sm_90a"
    assert cuda_w4.gencode((8, 6)) == "-gencode=arch=compute_86,code=sm_86"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("sym,split", [(False, 1), (True, 4), (False, 7)])
def test_decode_kernel_matches_reference(m, sym, split):
    from turbopack.formats import get_format
    from turbopack.inference.kernels import reference

    n, k = 4096 + 16, 2048   # N not a multiple of 64: a partial tile
    fmt = get_format("w4a16", group_size=128, sym=sym)
    q = fmt.quantize(torch.randn(n, k, device="cuda"))
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").bfloat16()
        b = torch.randn(n, device="cuda").bfloat16()
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        cuda_w4.w4_decode(x, packed, (n, k), b, split, out=out)
        err = reference.rel_err(out, reference.ref_linear(x, "w4a16", q, b))
        assert err < 1e-2, f"tile_n={tile_n}: rel err {err:.2e}"
