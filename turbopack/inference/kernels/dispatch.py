"""The public entry of the GPU kernels: ``linear(x, fmt, layout, packed, shape, bias, config)``.

It picks the kernel family from the layout (a registry, not string branches) and the kernel
config from the tuned table of the device's arch, ``configs/<arch>.json`` (versioned; loaded with
importlib.resources), keyed by layout, then weight shape ``"NxK"`` (or ``default``), then M
bucket: the entry of the smallest tuned bucket >= M (none past the largest). A ``config``
argument (a config.KernelConfig) is laid over the looked-up entry: its kernel, and its keys where
set. Without a table entry the family's own untuned default applies.

    >>> y = linear(x, fmt, "w4_t64x64", packed, (N, K), bias)        # x [..., K] bf16/fp16 on CUDA
    >>> h = glu(x, fmt, "w4_t64x64", packed, (2 * I, K), Activation.SILU)   # [..., I], or None
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from turbopack.errors import ShapeError, TurbopackError
from turbopack.formats import Format
from turbopack.inference.config import Activation, NormStyle
from turbopack.inference.kernels import (
    cuda_fp4,
    cuda_i8ws,
    cuda_w4,
    cuda_w4mm,
    cuda_w4wg,
    cuda_w4ws,
    cuda_w8,
    cuda_w8ws,
    fp8,
    w8a8,
    weight_only,
)
from turbopack.inference.kernels import table as kernel_table
from turbopack.inference.kernels.config import KernelConfig, KernelName, or_default
from turbopack.inference.kernels.epilogue import interpreting, triton
from turbopack.inference.kernels.fold import FOLD_PARTS_MAX, FoldArgs, Folded
from turbopack.inference.kernels.table import KernelTable
from turbopack.layouts import get_layout
from turbopack.layouts.archs import arch_for_capability
from turbopack.layouts.base import Layout, LayoutName
from turbopack.registry import Registry


@dataclass(frozen=True)
class Family:
    """How one layout is computed: run(x2, packed, shape, bias, cfg, out, fmt) and its default config."""

    run: Callable[..., torch.Tensor]
    default: Callable[[int, int, int, Format], KernelConfig]
    needs: str = ""   # a capability the device must have ("" = any CUDA device)


#: the CUDA C++ kernels of the weight-only families: a config naming one that cannot take the call
#: (dtype, alignment, arch) runs Triton's default instead
_CUDA_KERNELS = (KernelName.CUDA, KernelName.DQ_MM, KernelName.CUDA_MM, KernelName.CUDA_WG, KernelName.CUDA_WS)


def _wo(kind: weight_only.Kind) -> Family:
    def run(x2, packed, shape, bias, cfg, out, fmt):
        group = getattr(fmt, "group_size", 64)
        kernel = cfg.kernel
        if kind == weight_only.W4 and kernel is KernelName.CUDA and cuda_w4.supports(x2, fmt, packed, shape):
            stages = cuda_w4.DEFAULT_STAGES if cfg.ring_stages is None else cfg.ring_stages
            variant = cuda_w4.DEFAULT_VARIANT if cfg.variant is None else cfg.variant
            return cuda_w4.w4_decode(x2, packed, shape, bias, cfg.split_k or 0, out, group=group, stages=stages,
                                     variant=variant, prefetch=bool(cfg.prefetch), cluster=bool(cfg.cluster))
        if kind == weight_only.NVFP4 and kernel is KernelName.CUDA and cuda_fp4.supports(x2, packed, shape):
            return _fp4(x2, packed, shape, bias, cfg, out)
        if kind not in (weight_only.W4, weight_only.NVFP4) and kernel is KernelName.CUDA \
                and cuda_w8.supports(x2, packed, shape):
            return _w8(x2, packed, shape, bias, cfg, out)
        if kind == weight_only.W4 and kernel is KernelName.DQ_MM and cuda_w4.supports_dequant(x2, fmt, packed):
            return cuda_w4.dq_mm(x2, packed, shape, bias, out, group=group)
        if kind == weight_only.W4 and kernel is KernelName.CUDA_MM and cuda_w4mm.supports(x2, fmt, packed, shape):
            return _w4mm(x2, packed, shape, bias, cfg, out, group)
        if kind == weight_only.W4 and kernel is KernelName.CUDA_WG and cuda_w4wg.supports(x2, fmt, packed, shape):
            return _w4wg(x2, packed, shape, bias, cfg, out, group)
        if kind == weight_only.W4 and kernel is KernelName.CUDA_WS and cuda_w4ws.supports(x2, fmt, packed, shape):
            return cuda_w4ws.w4_wgws(x2, packed, shape, bias, out, group=group, **_ws_knobs(cfg))
        if kind == weight_only.I8 and kernel is KernelName.CUDA_WS and cuda_w8ws.supports(x2, packed, shape):
            return cuda_w8ws.w8_wgws(x2, packed, shape, bias, out, **_ws_knobs(cfg))
        if kernel in _CUDA_KERNELS:  # not taken: Triton's
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
def _i8_rowmajor(x2, packed, shape, bias, cfg, out, fmt):
    # decode: the CUDA 8-bit kernel (16-bit activations, cuda_w8) where the tuned table picks it;
    # prefill: the warp-specialized int8 GEMM (cuda_i8ws) where it picks that
    if cfg.kernel is KernelName.CUDA and cuda_w8.supports(x2, packed, shape):
        return _w8(x2, packed, shape, bias, cfg, out)
    taken = cfg.kernel is KernelName.CUDA_WS and cuda_i8ws.supports(x2, packed, shape)
    if cfg.kernel in _CUDA_KERNELS and not taken:  # not taken (no nvcc, another arch): the family default
        cfg = w8a8.default_config(x2.shape[0], shape[0], shape[1])
    return w8a8.linear(x2, packed, shape, bias, cfg, out)


FAMILIES.register(LayoutName.I8_ROWMAJOR, Family(_i8_rowmajor, lambda m, n, k, f: w8a8.default_config(m, n, k)))


def _w4mm(x2, packed, shape, bias, cfg, out, group):
    return cuda_w4mm.w4_mma(x2, packed, shape, bias, out, group=group, bn=or_default(cfg.block_n, cuda_w4mm.DEFAULT_BN),
                            bm=or_default(cfg.block_m, cuda_w4mm.DEFAULT_BM),
                            warp_n=or_default(cfg.warp_n, cuda_w4mm.DEFAULT_WARP_N),
                            stages=or_default(cfg.ring_stages, cuda_w4mm.DEFAULT_STAGES), split_k=cfg.split_k or 0)


def _w4wg(x2, packed, shape, bias, cfg, out, group):
    return cuda_w4wg.w4_wgmma(x2, packed, shape, bias, out, group=group,
                              bn=or_default(cfg.block_n, cuda_w4wg.DEFAULT_BN),
                              bm=or_default(cfg.block_m, cuda_w4wg.DEFAULT_BM),
                              stages=or_default(cfg.ring_stages, cuda_w4wg.DEFAULT_STAGES), split_k=cfg.split_k or 0,
                              wreg=bool(cfg.weight_registers))


def _ws_knobs(cfg: KernelConfig) -> dict:
    """The warp-specialized weight-only kernels' keywords (cuda_w4ws, cuda_w8ws) from a cuda_ws config
    (STREAM laid over a CLUSTER entry drops the cluster: stream-K sums through planes)."""
    return dict(bn=or_default(cfg.block_n, cuda_w4ws.DEFAULT_BN), bm=or_default(cfg.block_m, cuda_w4ws.DEFAULT_BM),
                stages=or_default(cfg.ring_stages, cuda_w4ws.DEFAULT_STAGES), split_k=cfg.split_k or 0,
                cluster=bool(cfg.cluster) and not cfg.stream_k, stream=bool(cfg.stream_k))


def _w8(x2, packed, shape, bias, cfg, out):
    stages = cuda_w8.DEFAULT_STAGES if cfg.ring_stages is None else cfg.ring_stages
    return cuda_w8.w8_decode(x2, packed, shape, bias, cfg.split_k or 0, out, stages=stages, cluster=bool(cfg.cluster),
                             variant=cfg.variant or cuda_w8.SPLIT)


def _fp4(x2, packed, shape, bias, cfg, out):
    stages = cuda_fp4.DEFAULT_STAGES if cfg.ring_stages is None else cfg.ring_stages
    return cuda_fp4.fp4_decode(x2, packed, shape, bias, cfg.split_k or 0, out, stages=stages)


def _fp8_rowmajor(x2, packed, shape, bias, cfg, out, fmt):
    # decode: the CUDA 8-bit kernel (16-bit activations, cuda_w8) where the tuned table picks it;
    # prefill: the warp-specialized e4m3 GEMM (cuda_i8ws) where it picks that, else _scaled_mm
    if cfg.kernel is KernelName.CUDA and cuda_w8.supports(x2, packed, shape):
        return _w8(x2, packed, shape, bias, cfg, out)
    if cfg.kernel is KernelName.CUDA_WS and not cuda_i8ws.supports(x2, packed, shape):
        cfg = KernelConfig(KernelName.SCALED_MM)
    return fp8.rowmajor_linear(x2, packed, shape, bias, cfg, out)


FAMILIES.register(LayoutName.FP8_ROWMAJOR, Family(_fp8_rowmajor, lambda m, n, k, f: KernelConfig(KernelName.SCALED_MM),
                                                  needs="fp8_mma"))


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
                   config: KernelConfig | None = None) -> KernelConfig:
    """The family default, the tuned table's entry laid over it, then ``config`` over that."""
    if config is not None and not isinstance(config, KernelConfig):  # the old dict form, say
        raise TypeError(f"config is a KernelConfig (KernelConfig.from_json reads {config!r}), "
                        f"not {type(config).__name__}")
    return _resolve(str(getattr(layout, "value", layout)), fmt, n, k, m, kernel_table.load_table(device_arch(device)),
                    config)


@functools.lru_cache(maxsize=4096)
def _resolve(layout: str, fmt: Format, n: int, k: int, m: int, table: KernelTable,
             config: KernelConfig | None) -> KernelConfig:
    # memoized: it runs once per linear call, and building the configs costs ~20 us of Python
    default = FAMILIES.get(layout).default(m, n, k, fmt)
    return default.over(table.lookup(layout, n, k, m)).over(config)


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


def _w4_rows_warps(cfg: KernelConfig, glu: bool) -> int:
    """The warps of the W4 rows with x per stage for this call (glu: GLU_WARPS first), 0 where the
    table runs another kernel (or, GLU_WARPS 0, the two launches)."""
    variant = cuda_w4.DEFAULT_VARIANT if cfg.variant is None else cfg.variant
    rows = (cfg.split_k or cuda_w4.ROWS_DEFAULT_WARPS) if variant == cuda_w4.ROWS_X else 0
    return rows if not glu or cfg.glu_warps is None else cfg.glu_warps


def _rows_w4(x2, fmt, packed, shape, cfg, act, bias, fold_args):
    warps = _w4_rows_warps(cfg, act is not None)
    if not (warps and cuda_w4.supports(x2, fmt, packed, shape)
            and (cuda_w4.chunks_aligned(packed) if act is None else cuda_w4.glu_ok(packed, shape, bias, act))):
        return None
    return cuda_w4.w4_decode(x2, packed, shape, bias, warps, group=fmt.group_size, stages=4, variant=cuda_w4.ROWS_X,
                             glu=act, fold=fold_args)


def _rows_w8(x2, fmt, packed, shape, cfg, act, bias, fold_args):
    variant = cfg.variant or cuda_w8.SPLIT
    if not (variant in cuda_w8.ROWS_VARIANTS and cuda_w8.supports(x2, packed, shape)
            and (act is None or (cfg.glu_warps != 0 and cuda_w8.glu_ok(shape, bias, act)))):
        return None
    warps = (cfg.glu_warps if act is not None else None) or cfg.split_k or cuda_w8.ROWS_DEFAULT_WARPS
    stages = cuda_w8.DEFAULT_STAGES if cfg.ring_stages is None else cfg.ring_stages
    return cuda_w8.w8_decode(x2, packed, shape, bias, warps, stages=stages, variant=variant, glu=act, fold=fold_args)


@dataclass(frozen=True)
class RowsKernel:
    """A layout's decode by rows with a fused gate|up's activation in its store (``glu``) and an
    RMSNorm folded in (``fold``): run(x2, fmt, packed, shape, cfg, act, bias, fold.FoldArgs or None)
    -> y [M, N or N / 2], or None where the table runs another kernel; n_padded(qweight): the rows
    the packed codes hold (a producer's CTAs, and its partial sums, are n_padded / 16)."""

    run: Callable[..., torch.Tensor | None]
    n_padded: Callable[[torch.Tensor], int]


ROWS_RUNNERS: Registry[RowsKernel] = Registry("decode by rows")
for _name in (LayoutName.W4_T16X64, LayoutName.W4_T64X64):
    ROWS_RUNNERS.register(_name, RowsKernel(_rows_w4, cuda_w4.n_padded))
for _name in (LayoutName.I8_T16X64, LayoutName.I8_T64X64, LayoutName.FP8_T16X64_UPCAST, LayoutName.I8_ROWMAJOR,
              LayoutName.FP8_ROWMAJOR):
    ROWS_RUNNERS.register(_name, RowsKernel(_rows_w8, cuda_w8.n_padded))


def glu(x: torch.Tensor, fmt: Format, layout: Layout | LayoutName | str, packed: dict[str, torch.Tensor],
        shape: tuple[int, int], activation: Activation, bias: torch.Tensor | None = None,
        config: KernelConfig | None = None) -> torch.Tensor | None:
    """act(x @ gate.T) * (x @ up.T) of a fused [gate; up] weight of ``shape`` (2I, K): [..., K] -> [..., I],
    in one launch of the decode by rows (W4: with x per stage, ``cuda_w4.glu_ok``; the 8-bit
    formats: ``cuda_w8.glu_ok``) where the tuned config says so: its GLU_WARPS, else its SPLIT_K
    where it runs that kernel anyway. None where not (GLU_WARPS 0: the two launches measured
    faster; past M = 16; a bias; another layout): the caller runs ``linear``, then the activation."""
    call = _rows_call(x, fmt, layout, packed, shape, config)
    if call is None:
        return None
    kernel, x2, shape, cfg = call
    y = kernel.run(x2, fmt, packed, shape, cfg, activation, bias, None)
    return None if y is None else y.reshape(*x.shape[:-1], shape[0] // 2)


def _rows_call(x: torch.Tensor, fmt: Format, layout, packed: dict[str, torch.Tensor], shape: tuple[int, int],
               config: KernelConfig | None) -> tuple[RowsKernel, torch.Tensor, tuple[int, int], KernelConfig] | None:
    """(the layout's RowsKernel, x as [M, K], shape, the resolved config) for ``glu`` and ``fold``, or
    None where no decode by rows serves the call (another layout, not on the GPU, a table entry
    for another kernel)."""
    layout = get_layout(layout)
    if layout.name not in ROWS_RUNNERS or x.device.type != "cuda":
        return None
    shape = (int(shape[0]), int(shape[1]))
    _check(x, layout, fmt, packed, shape)
    x2 = x.reshape(-1, shape[1])
    cfg = resolve_config(layout.name.value, fmt, shape[0], shape[1], x2.shape[0], x.device, config)
    return None if cfg.kernel is not KernelName.CUDA else (ROWS_RUNNERS.get(layout.name), x2, shape, cfg)


def linear(x: torch.Tensor, fmt: Format, layout: Layout | LayoutName | str, packed: dict[str, torch.Tensor],
           shape: tuple[int, int], bias: torch.Tensor | None = None,
           config: KernelConfig | None = None) -> torch.Tensor:
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


def _foldable(norm) -> bool:
    return getattr(norm, "style", None) is NormStyle.LLAMA


def fold(x: torch.Tensor | Folded, fmt: Format, layout: Layout | LayoutName | str, packed: dict[str, torch.Tensor],
         shape: tuple[int, int], bias: torch.Tensor | None = None, *, act: Activation | None = None,
         then: tuple[torch.Tensor, object] | None = None,
         config: KernelConfig | None = None) -> torch.Tensor | Folded | None:
    """The decode by rows with an RMSNorm folded in (``kernels.fold``): x a Folded (the previous
    linear's store wrote the norm's input) -> y, or with ``act`` the GLU's h as ``glu``; ``then`` =
    (residual, norm): this store adds the residual and writes the next norm's input, returned as a
    Folded. One of the two (a linear is a producer or a consumer). W4 and the 8-bit formats
    (``ROWS_RUNNERS``). None where not (the table runs another kernel, past M = 16, a norm not in
    Llama's style): the caller runs the plain path."""
    src = x.z if isinstance(x, Folded) else x
    call = None if isinstance(x, Folded) == (then is not None) else _rows_call(src, fmt, layout, packed, shape, config)
    if call is None:
        return None
    kernel, x2, shape, cfg = call
    m = x2.shape[0]
    if isinstance(x, Folded):
        parts = x.ss.shape[1]
        if not _foldable(x.norm) or x.ss.shape[0] != m or parts % 4 or parts > FOLD_PARTS_MAX:
            return None
        y = kernel.run(x2, fmt, packed, shape, cfg, act, bias, FoldArgs(ss_in=x.ss, eps=float(x.norm.eps)))
        return None if y is None else y.reshape(*src.shape[:-1], y.shape[-1])
    residual, norm = then
    res2 = residual.reshape(-1, shape[0])
    w = norm.weight
    if (act is not None or not _foldable(norm) or res2.shape[0] != m or residual.dtype != x.dtype
            or not res2.is_contiguous() or w.dtype != x.dtype or tuple(w.shape) != (shape[0],)
            or not w.is_contiguous() or shape[0] % 16 or res2.data_ptr() % 16 or w.data_ptr() % 16):
        return None
    r_out = torch.empty_like(res2)
    ss = torch.empty(m, kernel.n_padded(packed["qweight"]) // 16, dtype=torch.float32, device=x.device)
    z = kernel.run(x2, fmt, packed, shape, cfg, None, bias, FoldArgs(res=res2, weight=w, r_out=r_out, ss=ss))
    if z is None:
        return None
    return Folded(z.view(*x.shape[:-1], shape[0]), r_out.view(residual.shape), ss, norm)
