"""A kernel config: which kernel of a layout's family runs, with which tile and split parameters.

One frozen dataclass for every family. ``kernel`` names the kernel; the other fields are the
knobs, ``None`` where unset (dispatch then keeps the family default's value). A config only ever
carries the knobs its kernel reads (``KERNEL_KEYS``), so what is written is what runs. On disk
(configs/<arch>.json, the manifest's per-module ``kernel``, bench.json) a config is the JSON
object the tuner writes, ``{"kernel": "tc", "BN": 128, ...}``, keys in the kernel's own order:
``to_json(from_json(d)) == d`` for every entry the tuner writes. Pure Python: no torch, no triton.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from turbopack.errors import TurbopackError


class KernelName(str, enum.Enum):
    """The ``kernel`` value of a config: a kernel of the layout's family."""

    GEMV = "gemv"            # weight-only Triton, one token: fp32 FMAs
    TC = "tc"                # weight-only Triton on tensor cores
    CUDA = "cuda"            # the CUDA C++ decode kernels (cuda_w4.w4_decode, cuda_w8.w8_decode)
    DQ_MM = "dq_mm"          # W4 dequantized once, then cuBLAS (cuda_w4.dq_mm)
    CUDA_MM = "cuda_mm"      # the CUDA C++ W4 kernel for 16 < M <= 128 (cuda_w4mm.w4_mma)
    CUDA_WG = "cuda_wg"      # the CUDA C++ W4 kernel on Hopper's warpgroup MMA, M >= 32 (cuda_w4wg.w4_wgmma)
    CUDA_WS = "cuda_ws"      # warp-specialized wgmma, M >= 64: W4 (cuda_w4ws), W8A16 (cuda_w8ws), W8A8 (cuda_i8ws)
    TRITON = "triton"        # w8a8's int8 Triton GEMM
    INT_MM = "int_mm"        # w8a8 through torch._int_mm
    SCALED_MM = "scaled_mm"  # fp8 through torch._scaled_mm
    DEFAULT = "default"      # the family's untuned default (pack --explain: an entry a weight cannot take)


class ConfigError(TurbopackError):
    """A kernel config (a tuned table's entry, or a bench/tuner row) that names an unknown kernel
    or a key its kernel does not read."""


#: JSON key -> field name
JSON_FIELDS = {"BN": "block_n", "BM": "block_m", "BK": "block_k", "WARP_N": "warp_n", "GROUP_M": "group_m",
               "SPLIT_K": "split_k",
               "STAGES": "ring_stages", "VARIANT": "variant", "ROUND": "round_weights", "PLANES": "planes",
               "PREFETCH": "prefetch", "CLUSTER": "cluster", "STREAM": "stream_k", "WREG": "weight_registers",
               "GLU_WARPS": "glu_warps",
               "num_warps": "num_warps", "num_stages": "num_stages"}
_BOOL_KEYS = frozenset({"ROUND", "PLANES", "PREFETCH", "CLUSTER", "STREAM", "WREG"})

#: the keys each kernel reads, in the order the tuner writes them (tune.candidates)
KERNEL_KEYS: dict[KernelName, tuple[str, ...]] = {
    KernelName.GEMV: ("BN", "BK", "SPLIT_K", "ROUND", "num_warps", "num_stages"),
    KernelName.TC: ("BN", "BM", "BK", "SPLIT_K", "num_warps", "num_stages", "PLANES"),
    KernelName.CUDA: ("SPLIT_K", "STAGES", "VARIANT", "PREFETCH", "CLUSTER", "GLU_WARPS"),
    KernelName.DQ_MM: (),
    KernelName.CUDA_MM: ("BN", "BM", "WARP_N", "SPLIT_K", "STAGES"),
    KernelName.CUDA_WG: ("BN", "BM", "SPLIT_K", "STAGES", "WREG"),
    KernelName.CUDA_WS: ("BN", "BM", "SPLIT_K", "STAGES", "CLUSTER", "STREAM"),
    KernelName.TRITON: ("BM", "BN", "BK", "GROUP_M", "SPLIT_K", "num_warps", "num_stages"),
    KernelName.INT_MM: (),
    KernelName.SCALED_MM: (),
    KernelName.DEFAULT: (),
}


@dataclass(frozen=True)
class KernelConfig:
    kernel: KernelName
    block_n: int | None = None        # BN: output rows per program
    block_m: int | None = None        # BM: tokens per program (tensor-core kernels)
    block_k: int | None = None        # BK: K per loop iteration
    warp_n: int | None = None         # WARP_N: output rows per warp (cuda_mm: 16 or 32; unset = 16)
    group_m: int | None = None        # GROUP_M: row blocks sharing a weight block in L2 (w8a8)
    split_k: int | None = None        # SPLIT_K: programs sharing one K range (cuda: 0 = its own rule; W4
    #                                   VARIANT 3 = v8 has no split: SPLIT_K is its CTAs per SM, 0 = all that fit;
    #                                   VARIANT 4 = rows (W4 and W8), 5 = W4's rows of 64: SPLIT_K is its warps per
    #                                   CTA, 8 or 16, 0 = 16)
    ring_stages: int | None = None    # STAGES: depth of the CUDA decode kernel's cp.async ring
    variant: int | None = None        # VARIANT: which CUDA decode kernel (cuda_w4.VARIANTS: unset = v5;
    #                                   cuda_w8.VARIANTS: unset = split-K)
    round_weights: bool | None = None  # ROUND: GEMV rounds w to 16 bits as the contract does
    planes: bool | None = None        # PLANES: eight (four) plane dots instead of the re-interleave
    prefetch: bool | None = None      # PREFETCH: W4 decode v7 sends each CTA's weight slice to L2 first (unset = no)
    cluster: bool | None = None       # CLUSTER: W4 v7 / W8 decode and both cuda_ws kernels sum split-K
    #                                   partials in a CTA cluster (unset = no)
    stream_k: bool | None = None      # STREAM: the W4A16 / W8A16 cuda_ws kernel runs stream-K, one CTA an SM
    #                                   over every tile's stages (unset = no; cuda_w4ws.stream_ctas)
    weight_registers: bool | None = None  # WREG: cuda_wg loads the weights straight to registers (unset = no)
    glu_warps: int | None = None      # GLU_WARPS: a fused gate|up with the MLP's activation in its store
    #                                   (dispatch.glu) runs W4 VARIANT 6 in this many warps a CTA; 0 = not
    #                                   (gate|up, then act_mul); unset = SPLIT_K where VARIANT is 6
    num_warps: int | None = None
    num_stages: int | None = None     # Triton's software pipelining depth

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", KernelName(self.kernel))
        allowed = {JSON_FIELDS[key] for key in KERNEL_KEYS[self.kernel]}
        extra = sorted(f for f in _KNOBS if f not in allowed and getattr(self, f) is not None)
        if extra:  # a bug in the caller, not input: from_json checks the file's keys first
            raise ValueError(f"kernel {self.kernel.value!r} does not read {', '.join(extra)}")

    @classmethod
    def from_json(cls, d: Any, where: str) -> KernelConfig:
        """A config from its JSON object; ``where`` (file and entry) heads the one-line error."""
        got = d.get("kernel") if isinstance(d, dict) else d
        if not isinstance(got, str) or got not in _NAMES:
            raise ConfigError(f"{where}: kernel {got!r} is not one of {', '.join(sorted(_NAMES))}; fix the entry "
                              f"or re-run the tuner (benchmarks/bench_linear.py --tune)")
        kernel = KernelName(d["kernel"])
        keys = KERNEL_KEYS[kernel]
        fields = {}
        for key, v in d.items():
            if key == "kernel":
                continue
            if key not in keys:
                raise ConfigError(f"{where}: kernel {kernel.value!r} does not read {key!r} (its keys: "
                                  f"{', '.join(keys) or 'none'}); remove it or re-run the tuner")
            want = bool if key in _BOOL_KEYS else int
            if type(v) is not want:
                raise ConfigError(f"{where}: {key} is {v!r}; expected {want.__name__}")
            fields[JSON_FIELDS[key]] = v
        return cls(kernel, **fields)

    def to_json(self) -> dict[str, Any]:
        """The tuner's JSON object: ``kernel`` first, then the set keys in the kernel's order."""
        out: dict[str, Any] = {"kernel": self.kernel.value}
        for key in KERNEL_KEYS[self.kernel]:
            v = getattr(self, JSON_FIELDS[key])
            if v is not None:
                out[key] = v
        return out

    def over(self, top: KernelConfig | None) -> KernelConfig:
        """``top`` laid over this config: top's kernel, each of its keys from top where set, else
        from here (a table entry or an override completes the family default); keys top's kernel
        does not read are dropped. ``None`` or a DEFAULT top leaves this config as it is."""
        if top is None or top.kernel is KernelName.DEFAULT:
            return self
        fields = {}
        for key in KERNEL_KEYS[top.kernel]:
            name = JSON_FIELDS[key]
            v = getattr(top, name)
            fields[name] = getattr(self, name) if v is None else v
        return KernelConfig(top.kernel, **fields)

    def describe(self) -> str:
        """``cuda(SPLIT_K=2,STAGES=4)``: the kernel and its set keys."""
        rest = ",".join(f"{key}={v}" for key, v in self.to_json().items() if key != "kernel")
        return self.kernel.value + (f"({rest})" if rest else "")


_NAMES = frozenset(k.value for k in KernelName)
_KNOBS = tuple(f.name for f in dataclasses.fields(KernelConfig) if f.name != "kernel")


def or_default(value: Any, default: Any) -> Any:
    """A knob's value, or the launcher's own default where the config leaves it unset (None)."""
    return default if value is None else value
