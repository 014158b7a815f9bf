"""Programmatic dependent launch (PDL, sm_90+): whether the runtime's kernels use it.

A kernel launched with PDL may be scheduled while the kernel before it in the stream is still
running. Batch-1 decode is a chain of ~10 short kernels per layer (2-25 µs each), so the gap
between two of them (launch, the first DRAM round trip) is a visible share of a step. Every kernel
that opts in follows one rule, in every CTA: before its wait (``griddepcontrol.wait`` in CUDA,
``gdc_wait`` in Triton, epilogue.pdl_wait) it reads only what no kernel writes (packed weights,
scales, zeros); after it, the previous grid has completed and its writes are visible. The W4
decode kernel uses the time before the wait to start its weight ring (CUTLASS's "weight prefetch" idea), the glue
kernels wait first. Each kernel then lets the next one be scheduled (``launch_dependents``): the
glue right after its wait, the decode kernels when they store. Right after the wait was measured
too (H200, run 7): as fast in the 8B step, but W4 linears launched back to back ran 32% slower,
the next grid's CTAs piling onto the first SMs to free a slot; at the store it costs them 2%.
Because every kernel waits before it can complete, completion stays ordered along the chain, and
a kernel launched without PDL (cuBLAS, torch ops) simply waits for the whole previous grid.

Off on the CPU interpreter, below sm_90, where Triton lacks the intrinsics, or with
``TURBOPACK_PDL=0`` (an A/B switch for benchmarks, with ``cuda`` and ``triton`` for one side: see
MODES; the CUDA libraries read it when loaded and again on ``cuda_build.refresh_pdl()``).
The Triton linears take part by default since run 8 measured them (MODES).
"""

from __future__ import annotations

import functools
import os

import torch

from turbopack.inference.kernels.interpret import interpreting

ENV = "TURBOPACK_PDL"


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


#: TURBOPACK_PDL values: who launches with PDL. Unset = "1": the CUDA kernels, the Triton glue and
#: the Triton linears (W8A16's GEMV, the tensor-core and int8 kernels, the activation quantizer),
#: the linears waiting first and triggering at their store. With them in, the 8B batch-1 step
#: measured 3.23 ms against 3.30 without them (W8A16) and 3.20 against 3.65 (W8A8, whose linears
#: are all Triton; H200, run 8). "glue" is the mode without the linears (the default before run 8),
#: "all" the same as "1"; "cuda" and "triton" keep one side, for the benchmark's A/B.
MODES = {"1": ("cuda", "triton", "linears"), "all": ("cuda", "triton", "linears"), "0": (),
         "glue": ("cuda", "triton"), "cuda": ("cuda",), "triton": ("triton",)}


def enabled(device: torch.device, who: str = "cuda") -> bool:
    """Do launches on ``device`` by ``who`` ("cuda": the CUDA C++ libraries, "triton": the glue
    kernels, "linears": the Triton linears) use PDL now? ``TURBOPACK_PDL``: 1 (default) or all:
    all three; 0 none; glue: the first two; cuda or triton alone (the benchmark's A/B)."""
    mode = os.environ.get(ENV, "1").strip().lower()
    if device.type != "cuda" or interpreting() or who not in MODES.get(mode, MODES["1"]):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def triton_ok() -> bool:
    """Does this Triton have the grid-dependency intrinsics (``tl.extra.cuda.gdc_wait``)? Asked at
    every glue launch, answered once."""
    from turbopack.inference.kernels.triton_env import tl  # here: the CPU runtime never imports triton

    cuda = getattr(getattr(tl, "extra", None), "cuda", None) if tl is not None else None
    return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")


def triton_args(device: torch.device, who: str = "triton") -> dict:
    """The extra arguments of a Triton kernel's launch: its ``PDL`` constexpr and, when on,
    Triton's ``launch_pdl`` option."""
    on = enabled(device, who) and triton_ok()
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


__all__ = ["ENV", "MODES", "enabled", "triton_args", "triton_ok"]
