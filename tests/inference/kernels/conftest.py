"""Without CUDA the kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before
any kernel module is imported (triton.jit reads it when it decorates), so it is set here, before
this folder's test modules are collected. tuned_build: each CUDA source's one nvcc build a session
for the tuned targets, which several checks read."""

import os
import subprocess

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: the targets the runtime is tuned and measured on: ptxas at full optimization, spills checked
TUNED = [(8, 0), (9, 0)]


@pytest.fixture(scope="session")
def tuned_build(tmp_path_factory):
    """build(src) -> (nvcc's result, folder): src compiled once a session for the tuned targets
    (build.targets: sm_80 and sm_90a), ptxas at -O3 with its report (-v) on stderr, the intermediates kept in the
    folder (<stem>.compute_90a.ptx, ...). The spill check and the PDL check read the same build:
    w4.cu's front end alone is ~45 s on CI's two cores."""
    from turbopack.inference.kernels import cuda_i8ws, cuda_w4, cuda_w4wg, cuda_w4ws

    # w4_wgmma.cu's, w4_wgws.cu's and i8_wgws.cu's kernels exist for sm_90a alone, so their ptxas runs
    # on one core while the other idles; --split-compile spreads it over the kernels (148 -> 83 s on
    # two cores). Where the targets balance, it only adds overhead (w4.cu 153 -> 185 s).
    split = {cuda_w4wg.SRC, cuda_w4ws.SRC, cuda_i8ws.SRC}
    done: dict = {}

    def build(src):
        if src not in done:
            keep = tmp_path_factory.mktemp(src.stem)
            cmd = [cuda_w4.nvcc(), "-c", "-O3", "-std=c++17", "--threads", "0",
                   *(["--split-compile", "0"] if src in split else []), "-Xptxas", "-v,-O3", "-keep",
                   "-keep-dir", str(keep), *[cuda_w4.gencode(cap) for cap in TUNED], str(src),
                   "-o", str(keep / "k.o")]
            done[src] = (subprocess.run(cmd, capture_output=True, text=True), keep)
        return done[src]

    build.targets = TUNED
    return build
