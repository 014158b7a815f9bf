"""Programmatic dependent launch (kernels/pdl.py): off wherever it cannot run, and every CUDA decode
kernel that may be launched with it waits for the previous grid (griddepcontrol.wait) and lets the
next one start (griddepcontrol.launch_dependents). The GPU check that decoding with it on gives the
tokens of decoding with it off is tests/inference/test_runtime.py::test_pdl_on_and_off_decode_the_same."""

from __future__ import annotations

import re

import pytest
import torch

from turbopack.inference.kernels import cuda_fp4, cuda_w4, cuda_w8, pdl

NVCC = cuda_w4.nvcc()


def test_off_on_the_cpu_under_the_interpreter_and_by_the_switch(monkeypatch):
    monkeypatch.delenv(pdl.ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not pdl.enabled(torch.device("cpu"))
    assert pdl.triton_args(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setattr(pdl, "_capable", lambda index: True)  # an sm_90 GPU, as far as pdl can tell
    assert pdl.enabled(torch.device("cuda", 0))
    assert pdl.triton_args(torch.device("cuda", 0))["PDL"] == pdl.triton_ok()
    monkeypatch.setenv(pdl.ENV, "0")
    assert not pdl.enabled(torch.device("cuda", 0))
    assert not pdl.enabled(torch.device("cuda", 0), "triton")
    monkeypatch.setenv(pdl.ENV, "cuda")  # one side only: the benchmark's A/B
    assert pdl.enabled(torch.device("cuda", 0), "cuda") and not pdl.enabled(torch.device("cuda", 0), "triton")
    assert pdl.triton_args(torch.device("cuda", 0)) == {"PDL": False}
    monkeypatch.setenv(pdl.ENV, "triton")
    assert not pdl.enabled(torch.device("cuda", 0), "cuda") and pdl.enabled(torch.device("cuda", 0), "triton")
    assert not pdl.enabled(torch.device("cuda", 0), "linears")
    for mode in ("1", "all"):  # the default: the Triton linears too (measured in run 8)
        monkeypatch.setenv(pdl.ENV, mode)
        assert all(pdl.enabled(torch.device("cuda", 0), who) for who in ("cuda", "triton", "linears"))
    monkeypatch.setenv(pdl.ENV, "glue")
    assert pdl.enabled(torch.device("cuda", 0), "triton") and not pdl.enabled(torch.device("cuda", 0), "linears")
    assert pdl.triton_args(torch.device("cuda", 0), "linears") == {"PDL": False}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.enabled(torch.device("cuda", 0))


def entries(ptx: str) -> dict[str, str]:
    """{kernel name: body} of every .entry in a PTX file."""
    heads = list(re.finditer(r"\.entry\s+(\S+)\(", ptx))
    return {m.group(1): ptx[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(ptx)]
            for i, m in enumerate(heads)}


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("src", [cuda_w4.SRC, cuda_w8.SRC, cuda_fp4.SRC], ids=lambda p: p.name)
def test_every_decode_kernel_waits_for_the_previous_grid(src, tuned_build):
    """A decode kernel launched with PDL that skipped the wait could read x before the kernel that
    writes it finished. Every decode entry has the wait, and the trigger (at its store) after it
    (sm_90a's PTX, from the session's build that the spill check reads too)."""
    res, keep = tuned_build(src)
    assert res.returncode == 0, res.stderr[-2000:]
    ptx = (keep / f"{src.stem}.compute_90a.ptx").read_text()
    decode = {name: body for name, body in entries(ptx).items() if "decode" in name}
    assert decode, "no decode kernel found in the PTX"
    for name, body in decode.items():
        wait, trigger = body.find("griddepcontrol.wait"), body.find("griddepcontrol.launch_dependents")
        assert 0 <= wait < trigger, name
