"""GPU architectures we pack for: what each one's tensor cores can do and which layouts it offers.

Data, not branches: a new arch is one ``Arch`` entry plus ``tables/<arch>.json``. ``l2_mb`` and
``smem_per_sm_kb`` are those of the smallest listed part (conservative for tuning).

What an arch *runs natively* (``mma``, ``fp8_native``, ``fp4_native``, ``wgmma``, ``tcgen05``) is
hardware fact; which of our layouts it offers (``layouts``) is what our kernels can execute there
today. Blackwell has native FP4 tensor cores (sm100: tcgen05.mma with block scales, sm120:
block-scaled mma.sync), but no kernel of ours uses them yet, so its layouts are the mma.sync-family
ones that the Triton kernels and the CUDA mma.sync path run (docs/layouts.md says what is untested).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from turbopack.errors import TurbopackError
from turbopack.layouts.base import LayoutName
from turbopack.registry import Registry


class ArchName(str, enum.Enum):
    """Arch names; the values are written to disk (manifest ``arch``) and given to ``--arch``."""

    SM75 = "sm75"
    SM80 = "sm80"
    SM86 = "sm86"
    SM89 = "sm89"
    SM90 = "sm90"
    SM100 = "sm100"
    SM120 = "sm120"


@dataclass(frozen=True)
class Arch:
    name: ArchName
    marketing: tuple[str, ...]
    capability: tuple[int, int]
    #: mma.sync shape per input type; "wgmma.<type>" entries on sm90 (N is 8..256 in steps of 8),
    #: "tcgen05.<type>" on sm100 (M = 64/128 per CTA, N up to 256), "<type>.block_scale" for the
    #: block-scaled FP4 MMA (e2m1 values, one e4m3 scale per 16 along K: NVFP4)
    mma: Mapping[str, str] = field(hash=False)
    fp8_native: bool
    bf16: bool
    wgmma: bool
    tma: bool
    smem_per_sm_kb: int
    l2_mb: int
    layouts: tuple[LayoutName, ...]
    #: FP4 (e2m1) tensor cores with e4m3 block scales (NVFP4); none of our kernels use them yet
    fp4_native: bool = False
    #: Blackwell datacenter MMA (tcgen05.mma into tensor memory); sm120 has neither it nor wgmma
    tcgen05: bool = False
    #: nvcc's target for our CUDA sources: "a" (arch-specific) where the arch has instructions that
    #: exist only there (wgmma on sm90; tcgen05 on sm100; block-scaled mma.sync on sm120)
    nvcc_target: str = ""

    @property
    def label(self) -> str:
        return f"{self.name.value} ({', '.join(self.marketing)})"


_MMA_AMPERE = {"f16": "m16n8k16", "bf16": "m16n8k16", "s8": "m16n8k32"}
_L = LayoutName

ARCHS: Registry[Arch] = Registry("arch")
for _arch in (
    Arch(ArchName.SM75, ("T4", "RTX 2080 Ti", "Quadro RTX 8000"), (7, 5),
         MappingProxyType({"f16": "m16n8k8", "s8": "m8n8k16"}),
         fp8_native=False, bf16=False, wgmma=False, tma=False, smem_per_sm_kb=64, l2_mb=4,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR)),
    Arch(ArchName.SM80, ("A100", "A30"), (8, 0), MappingProxyType(dict(_MMA_AMPERE)),
         fp8_native=False, bf16=True, wgmma=False, tma=False, smem_per_sm_kb=164, l2_mb=24,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR, _L.FP8_T16X64_UPCAST, _L.NVFP4_T16X64)),
    Arch(ArchName.SM86, ("A10", "A40", "RTX 3090", "RTX A6000"), (8, 6), MappingProxyType(dict(_MMA_AMPERE)),
         fp8_native=False, bf16=True, wgmma=False, tma=False, smem_per_sm_kb=100, l2_mb=6,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR, _L.FP8_T16X64_UPCAST, _L.NVFP4_T16X64)),
    Arch(ArchName.SM89, ("L4", "L40S", "RTX 4090"), (8, 9), MappingProxyType({**_MMA_AMPERE, "e4m3": "m16n8k32"}),
         fp8_native=True, bf16=True, wgmma=False, tma=False, smem_per_sm_kb=100, l2_mb=48,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR, _L.FP8_ROWMAJOR, _L.NVFP4_T16X64)),
    Arch(ArchName.SM90, ("H100", "H200", "GH200"), (9, 0),
         MappingProxyType({**_MMA_AMPERE, "e4m3": "m16n8k32", "wgmma.f16": "m64nNk16", "wgmma.bf16": "m64nNk16",
                           "wgmma.s8": "m64nNk32", "wgmma.e4m3": "m64nNk32"}),
         fp8_native=True, bf16=True, wgmma=True, tma=True, smem_per_sm_kb=228, l2_mb=50,
         layouts=(_L.W4_T64X64, _L.I8_T64X64, _L.I8_ROWMAJOR, _L.FP8_ROWMAJOR, _L.NVFP4_T16X64),
         nvcc_target="90a"),
    # Blackwell datacenter: no wgmma (sm90a only); tcgen05 is unused by our kernels, which run
    # there as Triton (tl.dot) and mma.sync code, hence the 16-row mma.sync-family tiles.
    Arch(ArchName.SM100, ("B200", "GB200"), (10, 0),
         MappingProxyType({**_MMA_AMPERE, "e4m3": "m16n8k32", "tcgen05.f16": "m128nNk16",
                           "tcgen05.bf16": "m128nNk16", "tcgen05.s8": "m128nNk32", "tcgen05.e4m3": "m128nNk32",
                           "tcgen05.e2m1.block_scale": "m128nNk64"}),
         fp8_native=True, bf16=True, wgmma=False, tma=True, smem_per_sm_kb=228, l2_mb=126,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR, _L.FP8_ROWMAJOR, _L.NVFP4_T16X64),
         fp4_native=True, tcgen05=True, nvcc_target="100a"),
    # Blackwell consumer (GeForce RTX 50, RTX PRO Blackwell): mma.sync-class MMAs only (no wgmma,
    # no tcgen05/TMEM), Ada-sized shared memory.
    Arch(ArchName.SM120, ("RTX 5090", "RTX 5080", "RTX PRO 6000 Blackwell"), (12, 0),
         MappingProxyType({**_MMA_AMPERE, "e4m3": "m16n8k32", "e2m1.block_scale": "m16n8k64"}),
         fp8_native=True, bf16=True, wgmma=False, tma=True, smem_per_sm_kb=100, l2_mb=64,
         layouts=(_L.W4_T16X64, _L.I8_T16X64, _L.I8_ROWMAJOR, _L.FP8_ROWMAJOR, _L.NVFP4_T16X64),
         fp4_native=True, nvcc_target="120a"),
):
    ARCHS.register(_arch.name, _arch)


def get_arch(name: str | ArchName | Arch) -> Arch:
    """Look up an arch by name ("sm90"; "SM_90" and "sm_90" are accepted spellings)."""
    if isinstance(name, Arch):
        return name
    key = str(getattr(name, "value", name)).lower().replace("_", "")
    return ARCHS.get(key if key in ARCHS else name)


def resolve_arch(name: str | ArchName | Arch) -> Arch:
    """``--arch`` value: a name, or "auto" for the GPU in this machine."""
    return detect_arch() if str(getattr(name, "value", name)).lower() == "auto" else get_arch(name)


def arch_for_capability(major: int, minor: int, device: str = "GPU") -> Arch:
    archs = [ARCHS.get(name) for name in ARCHS]
    for arch in archs:
        if arch.capability == (major, minor):
            return arch
    # Same major, lower minor: e.g. sm87 (Orin) runs sm86 code, sm103 (B300) sm100's, sm121 (DGX
    # Spark) sm120's. Never across majors: sm90 layouts use wgmma (sm90a only), and sm100 and sm120
    # differ in their MMAs (tcgen05 vs mma.sync), so a new major needs its own entry.
    same_major = [a for a in archs if a.capability[0] == major and a.capability[1] < minor]
    if same_major:
        return max(same_major, key=lambda a: a.capability)
    known = ", ".join(ARCHS.names())
    raise TurbopackError(
        f"{device} has compute capability {major}.{minor}, which has no turbopack layouts; pass --arch explicitly (one "
        f"of {known}; sm89 layouts run on any later GPU)"
    )


def detect_arch() -> Arch:
    """The arch of CUDA device 0, for ``--arch auto``."""
    import torch

    if not torch.cuda.is_available():
        raise TurbopackError(
            "--arch auto needs a visible CUDA GPU and none was found; pass --arch with the target GPU's arch (one of "
            f"{', '.join(ARCHS.names())})"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return arch_for_capability(major, minor, torch.cuda.get_device_name(0))
