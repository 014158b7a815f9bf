"""What every linear kernel ends with: scale, bias, cast and store, or, for split-K, the
cross-program reduction that does the same once the last K slice of an output tile arrives.

Split-K without extra launches: each program atomically adds its fp32 partial tile into a
workspace, then bumps a per-tile counter; the program that brings the counter to SPLIT_K reads
the sums back (atomically, at L2), applies the epilogue, stores the output and puts the workspace
and counter back to zero for the next call. The workspace is one buffer per device shared by every
kernel (calls on one stream run one after another); it is created zeroed and only grows, so CUDA
graphs that captured a call keep pointing at valid, zeroed memory. Not safe for concurrent
launches on several streams.
"""

from __future__ import annotations

import functools
import math

import torch

from turbopack.inference.kernels.triton_env import interpreting, tl, triton  # noqa: F401 (re-exported)

_WS: dict[tuple[str, torch.dtype | str], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers stay alive: a captured graph may point at them


def stream_ctas(tiles: int, stages: int, sms: int) -> int:
    """Stream-K's grid (csrc/ws_stream.cuh, the warp-specialized kernels' STREAM): one CTA an SM, at
    most one a stage, or 0 where stream-K does not apply: a CTA's run of ceil(tiles x stages / ctas)
    stages must be shorter than a tile's ``stages`` (so a tile's head is its CTA's last segment),
    which holds where the tiles are fewer than the SMs, the case split-K serves only in whole
    multiples of the tiles."""
    units = tiles * stages
    ctas = min(sms, units)
    return ctas if stages > 1 and math.ceil(units / ctas) < stages else 0


@functools.lru_cache(maxsize=256)
def stream_planes(tiles: int, stages: int, ctas: int) -> int:
    """The most slices a tile has past its head (ws_stream.cuh sk_segments): stream-K's planes."""
    units = tiles * stages

    def cta(u: int) -> int:  # sk_cta: the CTA whose run holds stage unit u
        return ((u + 1) * ctas - 1) // units

    return max(cta((t + 1) * stages - 1) - cta(t * stages) for t in range(tiles))


if triton is not None:

    @triton.jit
    def pdl_wait(PDL: tl.constexpr):
        """Before anything a previous kernel may write (kernels/pdl.py): wait for its grid."""
        if PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def pdl_trigger(PDL: tl.constexpr):
        """Let the next grid be scheduled (kernels/pdl.py): large kernels call it at their store."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def pdl_enter(PDL: tl.constexpr):
        """A small (glue) kernel's first statement: wait, then let the next grid be scheduled."""
        pdl_wait(PDL)
        pdl_trigger(PDL)


def _grown(key: tuple, numel: int, make) -> torch.Tensor:
    """The per-device buffer under ``key``, replaced by ``make(n)`` when it holds fewer than ``numel``
    elements; the outgrown one is kept alive (a captured graph may point at it)."""
    buf = _WS.get(key)
    if buf is None or buf.numel() < numel:
        if buf is not None:
            _RETIRED.append(buf)
        buf = _WS[key] = make(max(numel, 1 << 16))
    return buf


def workspace(device: torch.device, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed buffer of at least ``numel`` elements that the kernels leave zeroed."""
    return _grown((str(device), dtype), numel, lambda n: torch.zeros(n, dtype=dtype, device=device))


def counters(device: torch.device, numel: int, owner: str) -> torch.Tensor:
    """Zeroed int32 counters that ``owner``'s kernels leave zeroed (a buffer of its own, so no two
    kernel families that PDL may overlap share one)."""
    return _grown((str(device), f"counters:{owner}"), numel, lambda n: torch.zeros(n, dtype=torch.int32, device=device))


def dirty_zeroed_buffers() -> list[str]:
    """The shared zeroed buffers (``workspace``, ``counters``) that are not all zero, each named with
    its count of non-zeros, then zeroed again. Every kernel that adds into them or counts on them
    assumes zeros, so one left dirty breaks whatever runs next (run 34: a stream-K grid's plane in
    the fp32 workspace, caught by the next candidate's check). Synchronizes the current device first."""
    dirty = []
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    for (dev, kind), buf in list(_WS.items()):
        if kind == "slices":  # scratch, written before it is read
            continue
        if buf.any():
            dirty.append(f"{dev} {kind}: {int(buf.count_nonzero())} non-zero")
            buf.zero_()
    return dirty


def splitk_buffers(device: torch.device, m: int, n: int, tiles: int, split_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [m*n] partial sums, int32 [tiles] counters); dummies when split_k == 1."""
    if split_k == 1:
        return workspace(device, 1, torch.float32), workspace(device, 1, torch.int32)
    return workspace(device, m * n, torch.float32), workspace(device, tiles, torch.int32)


def splitk_slices(device: torch.device, m: int, n: int, tiles: int, split_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [split_k, m, n] partial tiles, int32 [tiles] counters) for the kernels that reduce split-K
    by slices (csrc/w4_mma.cu): each K slice stores its partial tile with plain stores and the last one
    to arrive sums the slices in order, where atomics into one zeroed buffer cost an L2 atomic per
    element and slice. Split 1 stores no slice: dummies (plane_buffers with no plane)."""
    return plane_buffers(device, split_k if split_k > 1 else 0, m, n, tiles)


def plane_buffers(device: torch.device, planes: int, m: int, n: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [planes, m, n] scratch planes, int32 [tiles] counters), or dummies where ``planes`` is 0.
    The planes are fully written before they are read: one buffer per device, not zeroed, grown as
    ``workspace`` grows; the counters are the shared zeroed ones. Never the zeroed fp32 workspace, even
    for one plane (stream-K's tiles of two slices have one): a plane written there would break every
    kernel that adds into it assuming zeros, and could write past its end (run 34's tuner: a Triton
    split-K candidate after a one-plane stream-K one missed by 0.71)."""
    if planes == 0:
        return workspace(device, 1, torch.float32), workspace(device, 1, torch.int32)
    slices = _grown((str(device), "slices"), planes * m * n,
                    lambda n_: torch.empty(n_, dtype=torch.float32, device=device))
    return slices, workspace(device, tiles, torch.int32)


if triton is not None:

    @triton.jit
    def mma(a, b, acc, DOT_F32: tl.constexpr):
        """acc + a @ b on tensor cores. DOT_F32 (the CPU interpreter only): its tl.dot multiplies
        bf16 bit patterns as integers, so the (exactly representable) operands go in as fp32."""
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
        else:
            acc = tl.dot(a, b, acc)
        return acc

    @triton.jit
    def finish(acc, scale, bias, y_ptrs, ws_ptrs, mask, CNT, tile_id, SPLIT_K, ATOMIC: tl.constexpr):
        """y = acc * scale + bias (fp32), cast to y's dtype; with split-K, over the sum of all
        SPLIT_K programs' ``acc`` for this tile (ATOMIC = SPLIT_K > 1, a compile-time flag so one
        binary serves every split factor). ``scale``/``bias`` broadcast against ``acc``."""
        if not ATOMIC:
            tl.store(y_ptrs, (acc * scale + bias).to(y_ptrs.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(ws_ptrs, acc, mask=mask)
            tl.debug_barrier()  # every thread's partial is in before the tile counts as done
            done = tl.atomic_add(CNT + tile_id, 1)
            if done == SPLIT_K - 1:
                zero = tl.zeros_like(acc)
                tot = tl.atomic_add(ws_ptrs, zero, mask=mask)  # read at L2, where the adds landed
                tl.store(ws_ptrs, zero, mask=mask)
                tl.store(y_ptrs, (tot * scale + bias).to(y_ptrs.dtype.element_ty), mask=mask)
                tl.atomic_xchg(CNT + tile_id, 0)
