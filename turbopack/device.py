"""Which torch device a command runs on: the one function every command and API entry point uses.

A CUDA device always comes back with its index (``cuda:0``, never bare ``cuda``): safetensors,
CUDA graphs and the kernels' per-device caches key on the index, and a bare "cuda" reaches them
as "cuda:None".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turbopack.errors import TurbopackError

CHOICES = "auto | cuda | cuda:N | cpu"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): the current CUDA device if one is visible, else the CPU."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TurbopackError(f"--device {name!r}: not a device; use {CHOICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise TurbopackError(f"--device {name}: turbopack runs on CUDA GPUs or the CPU; use {CHOICES}")
    if not torch.cuda.is_available():
        raise TurbopackError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise TurbopackError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def safetensors_device(device: torch.device) -> str:
    """The device string safetensors' ``safe_open`` takes ("cuda:0", "cpu")."""
    dev = resolve_device(device)
    return f"cuda:{dev.index}" if dev.type == "cuda" else "cpu"


class PeakMemory:
    """Peak bytes of torch memory on ``device`` inside a ``with`` block, above what was held at its
    start (``.peak``; ``.now`` while inside). CUDA: the caching allocator's own counters. The CPU has
    no such counter, so every storage an op creates there is counted until it is freed (a torch
    dispatch mode: a few microseconds an op, for benchmarks and tests; tensors made outside torch's
    ops, e.g. from numpy, are not seen).

        with PeakMemory(torch.device("cpu")) as mem:
            run()
        print(mem.peak / 1e9, "GB")
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak = 0
        self._base = 0
        self._mode = None

    @property
    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) - self._base
        return self._mode.now if self._mode is not None else 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._mode = _storage_meter(self.device.type)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._mode.__exit__(*exc)
            self.peak = self._mode.peak


def _storage_meter(device_type: str):
    """A dispatch mode counting the bytes of the storages ops create on ``device_type`` until each
    is freed (a storage's Python object lives exactly as long as the storage: its finalizer is the
    free; views and parameters share their base's storage, so nothing is counted twice)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class StorageMeter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.now = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == device_type:
                    self._see(t.untyped_storage())
            return out

        def _see(self, storage) -> None:
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self.live:
                return
            self.live[ptr] = storage.nbytes()
            self.now += self.live[ptr]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, ptr)

        def _free(self, ptr: int) -> None:
            self.now -= self.live.pop(ptr, 0)

    return StorageMeter()


@dataclass(frozen=True)
class LiveBlock:
    """One CUDA allocation alive at the peak: its bytes and where it was made (``file:line
    function`` of the innermost frame under ``root``, or the innermost frame; "?" when it was
    made before the recorded window)."""

    bytes: int
    where: str


class PeakBreakdown:
    """What is alive on a CUDA ``device`` at the peak inside a ``with`` block (``.peak`` bytes,
    ``.blocks`` largest first), from the allocator's recorded history
    (``torch.cuda.memory._record_memory_history``, Python stacks of allocations only). Costs a
    stack capture per allocation: a diagnostic, not for timing runs. ``max_entries`` bounds the
    history kept (the newest events); blocks made before it show as "?"."""

    def __init__(self, device: torch.device, max_entries: int = 1_500_000, root: str = "turbopack") -> None:
        self.device = resolve_device(device)
        self.max_entries, self.root = max_entries, root
        self.peak, self.blocks = 0, []

    def __enter__(self) -> PeakBreakdown:
        torch.cuda.synchronize(self.device)
        torch.cuda.memory._record_memory_history(max_entries=self.max_entries, context="alloc", stacks="python",
                                                 device=self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        snapshot = torch.cuda.memory._snapshot(self.device)
        torch.cuda.memory._record_memory_history(enabled=None, device=self.device)
        self.peak, self.blocks = peak_live_blocks(snapshot, self.device.index, self.root)


def peak_live_blocks(snapshot: dict, device_index: int, root: str = "turbopack") -> tuple[int, list[LiveBlock]]:
    """(peak bytes, the blocks alive then, largest first) from a ``torch.cuda.memory._snapshot()``.
    Replayed backwards from the blocks alive at the end, so a history that lost its oldest events
    still places the peak correctly if the peak lies inside it. Bytes as requested (the allocator
    rounds each block up to 512 B)."""
    events = snapshot["device_traces"][device_index]
    live = {b["address"]: (b.get("requested_size", b["size"]), b.get("frames", []))
            for seg in snapshot["segments"] if seg["device"] == device_index
            for b in seg["blocks"] if b["state"] == "active_allocated"}
    sign = {"alloc": -1, "free_requested": 1}  # undoing an event
    total = best = sum(size for size, _ in live.values())
    at = len(events)
    for i in range(len(events) - 1, -1, -1):
        total += sign.get(events[i]["action"], 0) * events[i]["size"]
        if total > best:
            best, at = total, i
    for e in reversed(events[at:]):  # back to the peak: events at..end undone
        if e["action"] == "alloc":
            live.pop(e["addr"], None)
        elif e["action"] == "free_requested":
            live[e["addr"]] = (e["size"], None)
    missing = {addr for addr, (_, frames) in live.items() if frames is None}
    for e in reversed(events[:at]):  # where the blocks freed after the peak were made
        if not missing:
            break
        if e["action"] == "alloc" and e["addr"] in missing:
            live[e["addr"]] = (live[e["addr"]][0], e.get("frames", []))
            missing.discard(e["addr"])
    blocks = [LiveBlock(size, _where(frames, root)) for size, frames in live.values()]
    return best, sorted(blocks, key=lambda b: -b.bytes)


def _where(frames: list[dict] | None, root: str) -> str:
    if not frames:
        return "?"
    mine = [f for f in frames if f"/{root}/" in f["filename"]] or frames
    f = mine[0]
    return f"{f['filename'].split(f'/{root}/')[-1]}:{f['line']} {f['name']}"
