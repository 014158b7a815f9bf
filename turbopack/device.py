"""Which torch device a command runs on: the one function every command and API entry point uses.

A CUDA device always comes back with its index (``cuda:0``, never bare ``cuda``): safetensors,
CUDA graphs and the kernels' per-device caches key on the index, and a bare "cuda" reaches them
as "cuda:None".
"""

from __future__ import annotations

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
