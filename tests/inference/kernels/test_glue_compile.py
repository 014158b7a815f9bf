"""The decode path's small Triton kernels (kernels/glue.py, the router's top-k, the rotary store)
through Triton's real compiler for sm_90 and sm_80: the tests that check their numbers run them
in the CPU interpreter, which accepts code the compiler refuses (a runtime ternary, a shape that is
not a power of two), so this is the CI check that the device will not fail to build them. Every
variant the families select: Llama's and Gemma's norms, with and without the sandwich pre-norm,
SiLU and GeLU, partial rotary on a head of 96, a top-k padded to a power of two."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from turbopack.inference.kernels import glue, kv_store, router

def compile(kernel, pointers, floats, arch, **const):
    names = kernel.arg_names
    sig = {n: ("*" + pointers[n] if n in pointers else "fp32" if n in floats else
               "constexpr" if n in const else "i32") for n in names}
    const = {n: v for n, v in const.items() if n in names}
    triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", arch, 32),
                   options=dict(num_warps=4))

bf = "bf16"
for arch in (90, 80):
    pdl = arch >= 90
    for pre in (False, True):
        for offset in (False, True):
            compile(glue._add_rmsnorm_kernel, dict(X=bf, R=bf, W=bf, PW=bf, OUT=bf, R_OUT=bf), {"eps"}, arch,
                    HAS_RES=True, PRE=pre, OFFSET=offset, BLOCK=4096, PDL=pdl)
    for offset in (False, True):
        compile(glue._qk_norm_kernel, dict(QKV=bf, QW=bf, KW=bf), {"eps"}, arch, OFFSET=offset, BLOCK=256, PDL=pdl)
    for gelu in (False, True):
        compile(glue._act_mul_kernel, dict(GU=bf, OUT=bf), set(), arch, GELU=gelu, BLOCK=2048, PDL=pdl)
    compile(glue._rope_kernel, dict(QKV=bf, COS="fp32", SIN="fp32", POS="i64", Q=bf, K=bf), set(), arch,
            D=96, ROT=64, BLOCK=128)
    for bits, codes in ((16, bf), (8, "i8"), (4, "u8")):
        compile(kv_store._rope_store_kernel, dict(QKV=bf, COS="fp32", SIN="fp32", POS="i64", Q=bf, KC=codes,
                                                  KS="fp32", KZ="fp32", VC=codes, VS="fp32", VZ="fp32"),
                set(), arch, D=128, ROT=96, BITS=bits, PDL=pdl)
    for top_k, pad in ((8, 8), (6, 8), (1, 1)):
        for normalise in (False, True):
            compile(router._topk_kernel, dict(LOGITS=bf, W=bf, IDX="i64"), set(), arch, TOP_K=top_k, K_PAD=pad,
                    NORMALISE=normalise, BLOCK_E=128, PDL=pdl)
print("compiled")
"""


def test_glue_router_and_rotary_kernels_compile_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
