"""The public entry of the GPU kernels: ``linear(x, fmt, layout, packed, shape, bias, config)``.

It picks the kernel family from the layout (a registry, not string branches) and the kernel
config from the tuned table of the device's arch, ``configs/<arch>.json`` (versioned; loaded with
importlib.resources), keyed by layout, then weight shape ``"NxK"`` (or ``default``), then M
bucket: the entry of the smallest tuned bucket >= M (none past the largest). A ``config``
argument overrides single keys of the looked-up entry; keys a family does not know are ignored.
Without a table entry the family's own untuned default applies.

    >>> y = linear(x, fmt, "w4_t64x64", packed, (N, K), bias)        # x [..., K] bf16/fp16 on CUDA
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from turbopack.errors import ShapeError, TurbopackError
from turbopack.formats import Format
from turbopack.inference.kernels import cuda_w4, fp8, w8a8, weight_only
from turbopack.inference.kernels.epilogue import interpreting, triton
from turbopack.inference.kernels.table import CONFIG_VERSION, bucket_entry, load_table, lookup  # noqa: F401
from turbopack.layouts import get_layout
from turbopack.layouts.archs import arch_for_capability
from turbopack.layouts.base import Layout, LayoutName
from turbopack.registry import Registry

#: keys a config entry may set (anything else in a table or ``config`` is ignored)
CONFIG_KEYS = ("kernel", "BN", "BM", "BK", "SPLIT_K", "STAGES", "GROUP_M", "ROUND", "PLANES", "num_warps", "num_stages")


@dataclass(frozen=True)
class Family:
    """How one layout is computed: run(x2, packed, shape, bias, cfg, out, fmt) and its default config."""

    run: Callable[..., torch.Tensor]
    default: Callable[[int, int, int, Format], dict]
    needs: str = ""   # a capability the device must have ("" = any CUDA device)


def _wo(kind: weight_only.Kind) -> Family:
    def run(x2, packed, shape, bias, cfg, out, fmt):
        group = getattr(fmt, "group_size", 64)
        kernel = cfg.get("kernel")
        if kind == weight_only.W4 and kernel == "cuda" and cuda_w4.supports(x2, fmt, packed, shape):
            return cuda_w4.w4_decode(x2, packed, shape, bias, cfg.get("SPLIT_K", 0), out, group=group,
                                     stages=cfg.get("STAGES", cuda_w4.DEFAULT_STAGES))
        if kind == weight_only.W4 and kernel == "dq_mm" and cuda_w4.supports_dequant(x2, fmt, packed):
            return cuda_w4.dq_mm(x2, packed, shape, bias, out, group=group)
        if kernel in ("cuda", "dq_mm"):  # the CUDA kernels do not take this call: Triton's default
            cfg = weight_only.default_config(x2.shape[0], shape[0], shape[1], group if kind == weight_only.W4 else 64)
        return weight_only.launch(
            x2, kind, packed, shape, bias, cfg, group=group, sym=getattr(fmt, "sym", True), out=out
        )

    def default(m, n, k, fmt):
        return weight_only.default_config(m, n, k, fmt.group_size if kind == weight_only.W4 else 64)

    return Family(run, default)


FAMILIES: Registry[Family] = Registry("kernel family")
FAMILIES.register(LayoutName.W4_T16X64, _wo(weight_only.W4))
FAMILIES.register(LayoutName.W4_T64X64, _wo(weight_only.W4))
FAMILIES.register(LayoutName.I8_T16X64, _wo(weight_only.I8))
FAMILIES.register(LayoutName.I8_T64X64, _wo(weight_only.I8))
FAMILIES.register(LayoutName.FP8_T16X64_UPCAST, _wo(weight_only.FP8))
FAMILIES.register(LayoutName.NVFP4_T16X64, _wo(weight_only.NVFP4))
FAMILIES.register(LayoutName.I8_ROWMAJOR, Family(lambda x2, p, s, b, c, o, f: w8a8.linear(x2, p, s, b, c, o),
                                                 lambda m, n, k, f: w8a8.default_config(m, n, k)))
FAMILIES.register(LayoutName.FP8_ROWMAJOR, Family(lambda x2, p, s, b, c, o, f: fp8.rowmajor_linear(x2, p, s, b, c, o),
                                                  lambda m, n, k, f: {"kernel": "scaled_mm"}, needs="fp8_mma"))


def device_arch(device: torch.device) -> str:
    """The arch whose tuned table applies to ``device``: the registered arch that runs its code
    (sm87 -> sm86, sm103 -> sm100, sm121 -> sm120), else "sm<cc>" (no table: family defaults)."""
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    try:
        return arch_for_capability(major, minor).name.value
    except TurbopackError:
        return f"sm{major}{minor}"


def resolve_config(layout: str, fmt: Format, n: int, k: int, m: int, device: torch.device,
                   config: dict | None = None) -> dict:
    fam = FAMILIES.get(layout)
    cfg = fam.default(m, n, k, fmt)
    hit = lookup(device_arch(device), layout, n, k, m)
    for src in (hit, config):
        if src:
            cfg.update({key: v for key, v in src.items() if key in CONFIG_KEYS})
    return cfg


def _check(
    x: torch.Tensor, layout: Layout, fmt: Format, packed: dict[str, torch.Tensor], shape: tuple[int, int]
) -> None:
    where = f"linear {layout.name.value}"
    if triton is None:
        raise TurbopackError(
            f"{where}: the GPU kernels need triton; install it (pip install triton) or use the emulator backend"
        )
    layout.check_format(fmt)
    if x.shape[-1] != shape[1] or x.dtype not in (torch.bfloat16, torch.float16):
        raise ShapeError(f"{where}: x is {x.dtype} {list(x.shape)}; expected bfloat16/float16 [..., {shape[1]}]")
    if x.device.type != "cuda" and not interpreting():
        raise TurbopackError(f"{where}: x is on {x.device}; the kernels run on CUDA (or set TRITON_INTERPRET=1)")
    for spec in layout.packed_specs(fmt, shape):
        t = packed.get(spec.suffix)
        if (
            t is None
            or tuple(t.shape) != spec.shape
            or t.dtype != spec.dtype
            or t.device != x.device
            or not t.is_contiguous()
        ):
            got = "missing" if t is None else f"{t.dtype} {list(t.shape)} on {t.device}"
            raise ShapeError(
                f"{where}: packed {spec.suffix} is {got}; expected contiguous {spec.dtype} {list(spec.shape)} on "
                f"{x.device}"
            )
    if FAMILIES.get(layout.name).needs == "fp8_mma" and not (interpreting() or fp8.scaled_mm_supported(x.device)):
        raise TurbopackError(f"{where}: needs FP8 tensor cores (sm89+); pack for this GPU with fp8_t16x64_upcast")


def linear(x: torch.Tensor, fmt: Format, layout: Layout | LayoutName | str, packed: dict[str, torch.Tensor],
           shape: tuple[int, int], bias: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` from the packed tensors of ``layout``: [..., K] -> [..., N] in x's dtype."""
    layout = get_layout(layout)
    shape = (int(shape[0]), int(shape[1]))
    _check(x, layout, fmt, packed, shape)
    x2 = x.reshape(-1, shape[1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*x.shape[:-1], shape[0])
    fam = FAMILIES.get(layout.name)
    cfg = resolve_config(layout.name.value, fmt, shape[0], shape[1], m, x.device, config)
    try:
        y = fam.run(x2, packed, shape, bias, cfg, None, fmt)
    except triton.runtime.errors.OutOfResources:
        # a table entry tuned on a larger part (or another Triton) that does not fit here
        y = fam.run(x2, packed, shape, bias, fam.default(m, shape[0], shape[1], fmt), None, fmt)
    return y.reshape(*x.shape[:-1], shape[0])
