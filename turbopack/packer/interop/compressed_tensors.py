"""compressed-tensors checkpoints (llm-compressor, vLLM's native format) -> our formats, exactly.

The config (config.json quantization_config, quant_method "compressed-tensors") lists
``config_groups`` of schemes (weights: num_bits, type int|float, symmetric, strategy
tensor|channel|group, group_size; input_activations) and a storage ``format``:

  pack-quantized   weight_packed int32 [N, ceil(K*b/32)]: value i of a row at bits [i*b, i*b+b) of
                   the row's bit string (LSB first), stored as q + 2**(b-1) (q signed);
                   weight_scale [N, K/G] (group) or [N, 1] (channel); weight_shape [2] = (N, K);
                   weight_zero_point (asymmetric only) int32 [ceil(N*b/32), K/G], packed along N
                   the same way, zp + 2**(b-1); w = (q - zp) * s
  naive/int-quantized   weight int8 [N, K], weight_scale, (weight_zero_point if asymmetric)
  float-quantized       weight float8_e4m3fn [N, K], weight_scale [N, 1] or [1]
  nvfp4-pack-quantized  weight_packed uint8 [N, K/2] (e2m1 codes, even column in the low nibble),
                        weight_scale float8_e4m3fn [N, K/16], weight_global_scale float32 [1]:
                        our nvfp4 byte for byte. A W4A4 scheme (NVFP4 activations, with its
                        static input_global_scale) imports as the same weights; activations then
                        stay 16-bit (weight-only), recorded in the manifest's ``dropped``.

The offset makes the stored 4-bit values exactly our codes: symmetric q + 8 is our offset-binary
code, and asymmetric (q + 8, zp + 8) give the same q - zp. So int4 maps to w4a16, symmetric
per-channel/per-tensor int8 to w8a16 (weights only) or w8a8 (int8 activations), FP8 to fp8.
"""

from __future__ import annotations

import math
import re

import torch

from turbopack.formats import Format, get_format
from turbopack.formats.int4 import pack_nibbles
from turbopack.packer.interop.base import (
    ConvertError,
    Importer,
    ModuleJob,
    block_groups,
    columns_group,
    expand_groups,
    feasible_group_sizes,
    pick_group_size,
    unpack_lsb,
    w4_scale_dtype,
)

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx",
                   "weight_global_scale")
#: activation scales of static schemes: consumed, not carried (our activations are quantized per token at run time)
ACT_SUFFIXES = ("input_scale", "input_zero_point", "output_scale", "output_zero_point", "input_global_scale")


class CompressedTensorsImporter(Importer):
    quant_methods = ("compressed-tensors",)
    method = "compressed-tensors"

    def _schemes(self) -> list[tuple[dict, str]]:
        groups = self.qcfg.get("config_groups") or {}
        if not isinstance(groups, dict) or not groups:
            raise ConvertError(f"{self.where}: compressed-tensors config has no config_groups")
        out = []
        for name, scheme in groups.items():
            if not isinstance(scheme, dict) or not isinstance(scheme.get("weights"), dict):
                raise ConvertError(f"{self.where}: config group {name!r} is a preset name or has no weights scheme; "
                                   f"only explicit schemes are read")
            out.append((scheme, scheme.get("format") or self.qcfg.get("format") or "naive-quantized"))
        return out

    def _scheme_for(self, module: str, schemes: list[tuple[dict, str]]) -> tuple[dict, str]:
        if len(schemes) == 1:
            return schemes[0]
        hits = [s for s in schemes if any(_target_matches(t, module) for t in s[0].get("targets", []))]
        if len(hits) != 1:
            raise ConvertError(f"{self.where}: {module} matches {len(hits)} config groups; cannot tell its scheme")
        return hits[0]

    def plan(self) -> tuple[Format, list[ModuleJob]]:
        schemes = self._schemes()
        jobs, fmts = [], {}
        for prefix in self._modules():
            scheme, storage = self._scheme_for(prefix, schemes)
            job, fmt_key = self._plan_module(prefix, scheme, storage)
            jobs.append(job)
            fmts.setdefault(fmt_key, prefix)
        if not jobs:
            raise ConvertError(
                f"{self.where}: compressed-tensors config but no quantized tensors (weight_packed / weight_scale)"
            )
        if len(fmts) > 1:
            raise ConvertError(
                f"{self.where}: modules map to different turbopack formats "
                f"({', '.join(f'{k[0]} e.g. {m}' for k, m in fmts.items())}); "
                f"one folder holds one format"
            )
        (name, params), = fmts.keys()
        params = dict(params)
        if name == "w4a16":
            params["group_size"] = pick_group_size([j.extra["fits"] for j in jobs], self.where)
            scale_names = [f"{j.module}.weight_scale" for j in jobs]
            params["scale_dtype"] = w4_scale_dtype({self.header(s).dtype for s in scale_names},
                                                   lambda: map(self.read, scale_names), self.where)
        return get_format(name, **params), jobs

    def _modules(self) -> list[str]:
        out = []
        for name in self.ckpt.tensors:
            if name.endswith(".weight_scale"):
                out.append(name.removesuffix(".weight_scale"))
        return out

    def _plan_module(self, prefix: str, scheme: dict, storage: str) -> tuple[ModuleJob, tuple]:
        w = scheme["weights"]
        bits, kind, strategy = int(w.get("num_bits", 8)), w.get("type", "int"), w.get("strategy", "tensor")
        sym = bool(w.get("symmetric", True))
        acts = scheme.get("input_activations")
        where = f"{self.where}: {prefix}"
        srcs = tuple(
            f"{prefix}.{s}"
            for s in PACKED_SUFFIXES + ACT_SUFFIXES + ("weight",)
            if f"{prefix}.{s}" in self.ckpt.tensors
        )
        extra = {"bits": bits, "sym": sym, "strategy": strategy, "group": w.get("group_size"), "storage": storage}
        if storage == "nvfp4-pack-quantized":
            return ModuleJob(prefix, self._nvfp4_shape(prefix, w), srcs, extra), ("nvfp4", ())
        if storage == "pack-quantized":
            shape = self._packed_shape(prefix, bits)
            if bits == 4 and kind == "int" and strategy in ("group", "channel"):
                extra["fits"] = self._w4_groups(prefix, shape, extra)
                return ModuleJob(prefix, shape, srcs, extra), ("w4a16", (("sym", sym),))
            if bits == 8 and kind == "int" and sym and strategy in ("channel", "tensor"):
                return ModuleJob(prefix, shape, srcs, extra), ("w8a16", ())
            raise ConvertError(
                f"{where}: pack-quantized {bits}-bit {kind} {strategy} {'symmetric' if sym else 'asymmetric'} "
                f"has no exact turbopack format (int4 grouped/per-channel, or symmetric per-channel int8)"
            )
        if storage in ("naive-quantized", "int-quantized", "float-quantized"):
            entry = self.header(f"{prefix}.weight")
            shape = tuple(entry.shape)
            if strategy not in ("channel", "tensor"):
                raise ConvertError(
                    f"{where}: {bits}-bit {kind} with strategy {strategy!r}; turbopack's 8-bit formats have one "
                    f"scale per output channel (or per tensor), so a per-group/block source cannot map exactly"
                )
            if kind == "float" and bits == 8 and entry.dtype == torch.float8_e4m3fn:
                return ModuleJob(prefix, shape, srcs, extra), ("fp8", (("per_tensor", strategy == "tensor"),))
            if kind == "int" and bits == 8 and entry.dtype == torch.int8:
                if not sym:
                    raise ConvertError(
                        f"{where}: asymmetric int8 weights; turbopack's int8 is symmetric (no zero point)"
                    )
                int_acts = (
                    isinstance(acts, dict) and acts.get("type", "int") == "int" and int(acts.get("num_bits", 8)) == 8
                )
                return ModuleJob(prefix, shape, srcs, extra), ("w8a8" if int_acts else "w8a16", ())
            raise ConvertError(
                f"{where}: {storage} {bits}-bit {kind} weights of dtype {entry.dtype}; expected int8 or float8_e4m3fn"
            )
        raise ConvertError(
            f"{where}: compressed-tensors format {storage!r} is not read (pack-quantized, naive-quantized, "
            f"int-quantized, float-quantized, nvfp4-pack-quantized are)"
        )

    def _packed_shape(self, prefix: str, bits: int) -> tuple[int, int]:
        if f"{prefix}.weight_shape" not in self.ckpt.tensors:
            raise ConvertError(
                f"{self.where}: {prefix}.weight_shape is missing; pack-quantized needs the original shape"
            )
        n, k = (int(v) for v in self.read(f"{prefix}.weight_shape").reshape(-1).tolist())
        packed = self.header(f"{prefix}.weight_packed")
        if packed.dtype != torch.int32 or tuple(packed.shape) != (n, -(-k * bits // 32)):
            raise ConvertError(
                f"{self.where}: {prefix}.weight_packed is {packed.dtype} {list(packed.shape)}; expected int32 "
                f"[{n}, {-(-k * bits // 32)}] for a {bits}-bit [{n}, {k}] weight"
            )
        return n, k

    def _nvfp4_shape(self, prefix: str, w: dict) -> tuple[int, int]:
        """(N, K) of an NVFP4 module, its scheme and tensor headers checked against the format."""
        where = f"{self.where}: {prefix}"
        scheme = (int(w.get("num_bits", 0)), w.get("type"), w.get("group_size"), bool(w.get("symmetric", True)))
        if scheme != (4, "float", 16, True):
            raise ConvertError(f"{where}: nvfp4-pack-quantized with weights {scheme} (bits, type, group, symmetric); "
                               f"only NVFP4's (4, 'float', 16, True) maps to turbopack's nvfp4")
        packed, scale = self.header(f"{prefix}.weight_packed"), self.header(f"{prefix}.weight_scale")
        gs = self.header(f"{prefix}.weight_global_scale")
        n, k = packed.shape[0], 2 * packed.shape[-1]
        if (packed.dtype != torch.uint8 or len(packed.shape) != 2 or scale.dtype != torch.float8_e4m3fn
                or tuple(scale.shape) != (n, k // 16) or gs.dtype != torch.float32 or math.prod(gs.shape) != 1):
            raise ConvertError(
                f"{where}: NVFP4 tensors are weight_packed {packed.dtype} {list(packed.shape)}, weight_scale "
                f"{scale.dtype} {list(scale.shape)}, weight_global_scale {gs.dtype} {list(gs.shape)}; expected uint8 "
                f"[N, K/2], float8_e4m3fn [N, K/16], float32 [1]"
            )
        return n, k

    def _w4_groups(self, prefix: str, shape: tuple[int, int], extra: dict) -> set[int]:
        n, k = shape
        cols = self.header(f"{prefix}.weight_scale").shape[-1]
        g = k if extra["strategy"] == "channel" else int(extra["group"] or 0)
        if g <= 0 or k % g or cols != k // g:
            raise ConvertError(
                f"{self.where}: {prefix}.weight_scale has {cols} columns for K={k}, group size {g}; the checkpoint is "
                "inconsistent"
            )
        gidx = self.read(f"{prefix}.weight_g_idx") if f"{prefix}.weight_g_idx" in self.ckpt.tensors else None
        return feasible_group_sizes(columns_group(gidx, k, g, cols, prefix), k, prefix)

    def convert(self, job: ModuleJob, fmt: Format) -> dict[str, torch.Tensor]:
        x = job.extra
        if x["storage"] == "nvfp4-pack-quantized":  # the same bytes under our names
            return {"qweight": self.read(f"{job.module}.weight_packed").contiguous(),
                    "scales": self.read(f"{job.module}.weight_scale").contiguous(),
                    "global_scale": self.read(f"{job.module}.weight_global_scale").reshape(1).contiguous()}
        if x["storage"] == "pack-quantized":
            return self._convert_packed(job, fmt)
        scale = self.read(f"{job.module}.weight_scale").float().reshape(-1)
        w = self.read(f"{job.module}.weight")
        n = job.shape[0]
        if f"{job.module}.weight_zero_point" in self.ckpt.tensors and bool(
            self.read(f"{job.module}.weight_zero_point").any()
        ):
            raise ConvertError(
                f"{self.where}: {job.module}: non-zero weight_zero_point in a symmetric scheme; cannot map to a "
                "zero-free format"
            )
        if fmt.name.value == "fp8":
            return {
                "qweight": w.contiguous(),
                "scales": (scale[:1] if fmt.per_tensor else scale.expand(n)).contiguous(),
            }
        return {"qweight": w.contiguous(), "scales": scale.expand(n).contiguous()}

    def _convert_packed(self, job: ModuleJob, fmt: Format) -> dict[str, torch.Tensor]:
        n, k = job.shape
        bits = job.extra["bits"]
        codes = unpack_lsb(self.read(f"{job.module}.weight_packed"), bits, dim=1)[:, :k]  # stored q + 2**(b-1)
        scale = self.read(f"{job.module}.weight_scale")
        if bits == 8:
            return {"qweight": (codes - 128).to(torch.int8), "scales": scale.float().reshape(-1).expand(n).contiguous()}
        cols = scale.shape[-1]
        g = k if job.extra["strategy"] == "channel" else int(job.extra["group"])
        gidx = self.read(f"{job.module}.weight_g_idx") if f"{job.module}.weight_g_idx" in self.ckpt.tensors else None
        src = block_groups(columns_group(gidx, k, g, cols, job.module), k, fmt.group_size)
        sdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[fmt.scale_dtype]
        out = {
            "qweight": pack_nibbles(codes.to(torch.uint8)),
            "scales": expand_groups(scale.float().reshape(n, cols), src).to(sdt),
        }
        if not fmt.sym:
            zp = unpack_lsb(self.read(f"{job.module}.weight_zero_point"), 4, dim=0)[:n]  # [N, K/G], zp + 8
            out["zeros"] = expand_groups(zp, src).to(torch.uint8)
        return out

    def dropped(self, jobs: list[ModuleJob]) -> dict[str, str]:
        why = {"nvfp4-pack-quantized": "NVFP4 activation scale (W4A4); turbopack's nvfp4 is weight-only: activations "
                                       "stay 16-bit"}
        default = "static activation scale; turbopack quantizes activations per token at run time"
        return {s: why.get(j.extra.get("storage"), default) for j in jobs for s in j.sources
                if s.rpartition(".")[2] in ACT_SUFFIXES}


def _target_matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return module == target or module.endswith("." + target) or target in ("Linear", "torch.nn.Linear")

