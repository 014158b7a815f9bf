"""Supported model families as data: which tensors are linear weights, their shapes from the
config, how tensor parallelism splits them, and which ops feed which (for calibration).

A family names its HF architecture and its :class:`LinearSpec` s; a linear's output rows are a
tuple of :class:`Piece` s, one for a plain linear and several for a fused one (Phi-3's
``qkv_proj`` is q|k|v, ``gate_up_proj`` is gate|up), so TP and AWQ cut a fused linear at its own
boundaries. A ``*`` in a name is an expert index (MoE: every expert's linears are linears of
their own). lm_head is quantized only on request; embeddings, norms (incl. Qwen3/Gemma 3's
per-head q/k norms) and MoE routers never are. docs/families.md is the table of it all.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass, replace

from turbopack.errors import CheckpointError, UnsupportedModelError
from turbopack.hfconfig import architectures_of


class Parallel(str, enum.Enum):
    """How a tensor is split across ranks; the values are written to the manifest."""

    COLUMN = "column"
    ROW = "row"
    REPLICATED = "replicated"


@dataclass(frozen=True)
class Piece:
    """A run of channels: its width (a :func:`config_dims` key) and the config key counting the
    whole units (heads) in it that a TP split must not cut (None: plain channels)."""

    size: str
    unit: str | None = None


@dataclass(frozen=True)
class LinearSpec:
    """A decoder linear (its name inside a block): output rows ``n`` piece by piece, input ``k``,
    and how TP splits it (column: each piece of N cut into tp equal runs; row: K cut)."""

    module: str
    parallel: Parallel
    n: tuple[Piece, ...]
    k: Piece

    @property
    def unit(self) -> str | None:
        """The unit key of the split dimension (plain linears; a fused one has one per piece)."""
        return (self.n[0].unit if len(self.n) == 1 else None) if self.parallel is Parallel.COLUMN else self.k.unit


HEADS, KV_HEADS = "num_attention_heads", "num_key_value_heads"
HIDDEN, INTER = Piece("hidden_size"), Piece("intermediate_size")
Q_ROWS, KV_ROWS = Piece("q", HEADS), Piece("kv", KV_HEADS)
Q = LinearSpec("self_attn.q_proj", Parallel.COLUMN, (Q_ROWS,), HIDDEN)
K = LinearSpec("self_attn.k_proj", Parallel.COLUMN, (KV_ROWS,), HIDDEN)
V = LinearSpec("self_attn.v_proj", Parallel.COLUMN, (KV_ROWS,), HIDDEN)
O = LinearSpec("self_attn.o_proj", Parallel.ROW, (HIDDEN,), Q_ROWS)  # noqa: E741 (q k v o)
GATE = LinearSpec("mlp.gate_proj", Parallel.COLUMN, (INTER,), HIDDEN)
UP = LinearSpec("mlp.up_proj", Parallel.COLUMN, (INTER,), HIDDEN)
DOWN = LinearSpec("mlp.down_proj", Parallel.ROW, (HIDDEN,), INTER)
QKV = LinearSpec("self_attn.qkv_proj", Parallel.COLUMN, (Q_ROWS, KV_ROWS, KV_ROWS), HIDDEN)
GATE_UP = LinearSpec("mlp.gate_up_proj", Parallel.COLUMN, (INTER, INTER), HIDDEN)


def expert_linears(prefix: str, names: tuple[str, str, str], width: Piece) -> tuple[LinearSpec, ...]:
    """gate, up (column) and down (row) of the experts under ``prefix`` (TP splits each expert
    like a dense MLP: every rank holds a slice of every expert)."""
    gate, up, down = (f"{prefix}.{n}" for n in names)
    return (LinearSpec(gate, Parallel.COLUMN, (width,), HIDDEN), LinearSpec(up, Parallel.COLUMN, (width,), HIDDEN),
            LinearSpec(down, Parallel.ROW, (HIDDEN,), width))


MIXTRAL_EXPERTS = expert_linears("block_sparse_moe.experts.*", ("w1", "w3", "w2"), INTER)
QWEN_EXPERTS = expert_linears("mlp.experts.*", ("gate_proj", "up_proj", "down_proj"), Piece("moe_intermediate_size"))
SHARED_EXPERT = expert_linears("mlp.shared_expert", ("gate_proj", "up_proj", "down_proj"),
                               Piece("shared_expert_intermediate_size"))


@dataclass(frozen=True)
class ScaleGroup:
    """Linears reading one activation, and what produces it: a norm, or a linear whose output rows
    (all, or its piece ``piece`` when fused) feed them. Calibration folds per-channel scales into
    the producer (AWQ, SmoothQuant); ``judged``: the module AWQ measures the error on; ``gqa``: the
    producer is v, whose channels repeat over the query heads of their group."""

    producer: str
    consumers: tuple[str, ...]
    judged: str
    piece: int | None = None
    gqa: bool = False
    smooth: bool = True  # SmoothQuant folds here too (it leaves v -> o alone)


@dataclass(frozen=True)
class Family:
    architecture: str
    linears: tuple[LinearSpec, ...]
    stages: tuple[tuple[str, ...], ...]  # linears grouped by shared input, in forward order (GPTQ)
    groups: tuple[ScaleGroup, ...]
    has_qkv_bias: bool = False
    routers: tuple[str, ...] = ()  # linears never quantized (MoE routers): engines must be told so

    @property
    def linear_pattern(self) -> str:
        names = "|".join(_regex(s.module) for s in self.linears)
        return rf"model\.layers\.\d+\.({names})\.weight"

    @property
    def router_pattern(self) -> str:
        names = "|".join(_regex(r) for r in self.routers) or "(?!)"
        return rf"model\.layers\.\d+\.({names})\.weight"


def _regex(module: str) -> str:
    """A block-local name with ``*``/``#`` for the expert index, as a regex."""
    return re.escape(module).replace(r"\*", r"\d+").replace(r"\#", r"\d+")


_LLAMA = dict(
    linears=(Q, K, V, O, GATE, UP, DOWN),
    stages=((Q.module, K.module, V.module), (O.module,), (GATE.module, UP.module), (DOWN.module,)),
    groups=(ScaleGroup("input_layernorm", (Q.module, K.module, V.module), "self_attn"),
            ScaleGroup(V.module, (O.module,), O.module, gqa=True, smooth=False),
            ScaleGroup("post_attention_layernorm", (GATE.module, UP.module), "mlp"),
            ScaleGroup(UP.module, (DOWN.module,), DOWN.module)),
)
# Gemma: post_attention_layernorm normalises the attention output; the MLP reads pre_feedforward_layernorm.
_GEMMA = dict(_LLAMA, groups=(_LLAMA["groups"][0], _LLAMA["groups"][1],
                              ScaleGroup("pre_feedforward_layernorm", (GATE.module, UP.module), "mlp"),
                              _LLAMA["groups"][3]))
_PHI3 = dict(
    linears=(QKV, O, GATE_UP, DOWN),
    stages=((QKV.module,), (O.module,), (GATE_UP.module,), (DOWN.module,)),
    groups=(ScaleGroup("input_layernorm", (QKV.module,), "self_attn"),
            ScaleGroup(QKV.module, (O.module,), O.module, piece=2, gqa=True, smooth=False),
            ScaleGroup("post_attention_layernorm", (GATE_UP.module,), "mlp"),
            ScaleGroup(GATE_UP.module, (DOWN.module,), DOWN.module, piece=1)),
)

def _moe(experts: tuple[LinearSpec, ...], shared: tuple[LinearSpec, ...] = (), dense: dict | None = None) -> dict:
    """A MoE family: attention as Llama's; all experts' gate/up share one input (calibration runs
    every token through every expert, so one Hessian serves them all), each down its own. The
    MLP's input norm also feeds the 16-bit router, so no scale is folded there; up -> down is,
    expert by expert. ``dense``: the family's dense layers (Qwen2-MoE's mlp_only_layers); names a
    block lacks are dropped when the stages and groups are expanded for it."""
    gate, up, down = (s.module for s in experts)
    each = lambda name: name.replace("*", "#")  # noqa: E731  (one stage / group per expert)
    linears, first = [Q, K, V, O, *experts], [gate, up]
    stages, groups = [(each(down),)], [ScaleGroup(each(up), (each(down),), each(down))]
    if shared:
        linears += shared
        first += [shared[0].module, shared[1].module]
        stages.append((shared[2].module,))
        groups.append(ScaleGroup(shared[1].module, (shared[2].module,), shared[2].module))
    if dense:
        linears += dense["linears"][4:]
        first += dense["stages"][2]
        stages += dense["stages"][3:]
        groups += dense["groups"][2:]
    return dict(linears=tuple(linears), stages=(*_LLAMA["stages"][:2], tuple(first), *stages),
                groups=(*_LLAMA["groups"][:2], *groups))


FAMILIES = {
    f.architecture: f
    for f in (
        Family("LlamaForCausalLM", **_LLAMA),
        Family("MistralForCausalLM", **_LLAMA),
        Family("Qwen2ForCausalLM", **_LLAMA, has_qkv_bias=True),
        Family("Qwen3ForCausalLM", **_LLAMA),
        Family("Gemma2ForCausalLM", **_GEMMA),
        Family("Gemma3ForCausalLM", **_GEMMA),
        Family("Phi3ForCausalLM", **_PHI3),
        Family("MixtralForCausalLM", **_moe(MIXTRAL_EXPERTS), routers=("block_sparse_moe.gate",)),
        Family("Qwen2MoeForCausalLM", **_moe(QWEN_EXPERTS, SHARED_EXPERT, _LLAMA), has_qkv_bias=True,
               routers=("mlp.gate", "mlp.shared_expert_gate")),
        Family("Qwen3MoeForCausalLM", **_moe(QWEN_EXPERTS), routers=("mlp.gate",)),
    )
}
#: every family's linears by block-local name (a name means the same linear in every family)
LINEARS = {s.module: s for f in FAMILIES.values() for s in f.linears}
_LINEAR_RES = [(re.compile(_regex(name)), s) for name, s in LINEARS.items()]


def linear_spec(local: str) -> LinearSpec | None:
    """The spec of the block-local linear ``local`` ("mlp.experts.3.up_proj"), None if not one."""
    if local in LINEARS:
        return LINEARS[local]
    return next((s for rx, s in _LINEAR_RES if rx.fullmatch(local)), None)


def _expert_ids(template: str, names: set[str]) -> list[str]:
    rx = re.compile(_regex(template).replace(r"\d+", r"(\d+)", 1))
    return sorted({m.group(1) for n in names if (m := rx.fullmatch(n))}, key=int)


def block_stages(family: Family, names: set[str]) -> list[tuple[str, ...]]:
    """The family's GPTQ stages for a block with modules ``names``: ``*`` expands in place (all
    experts in one stage), ``#`` into one stage per expert; names the block lacks are dropped."""
    out = []
    for stage in family.stages:
        if "#" in stage[0]:
            out += [tuple(t.replace("#", e) for t in stage) for e in _expert_ids(stage[0], names)]
            continue
        star = [n for t in stage for n in (sorted((n for n in names if re.fullmatch(_regex(t), n)),
                                                  key=_natural) if "*" in t else [t])]
        out.append(tuple(star))
    return [s for s in (tuple(n for n in st if n in names) for st in out) if s]


def block_groups(family: Family, names: set[str]) -> list[ScaleGroup]:
    """The family's scale groups for a block with modules ``names`` (``#``: one per expert)."""
    out = []
    for g in family.groups:
        ids = _expert_ids(g.producer, names) if "#" in g.producer else [None]
        for e in ids:
            v = g if e is None else replace(g, producer=g.producer.replace("#", e), judged=g.judged.replace("#", e),
                                            consumers=tuple(c.replace("#", e) for c in g.consumers))
            if v.producer in names and all(c in names for c in v.consumers):
                out.append(v)
    return out


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


#: linears that serving engines (vLLM, our runtime) run as one matmul, by their last name part
FUSED_LINEARS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_LINEAR_NAME = re.compile(r"(?P<prefix>.*\.)(?P<proj>\w+)\.weight")


def fused_group(name: str) -> tuple[str, ...]:
    """The weights fused with linear weight ``name`` (itself included): model.layers.3.self_attn.
    k_proj.weight -> its layer's q, k and v weights; a linear fused with nothing -> (name,)."""
    m = _LINEAR_NAME.fullmatch(name)
    for group in FUSED_LINEARS:
        if m and m["proj"] in group:
            return tuple(f"{m['prefix']}{proj}.weight" for proj in group)
    return (name,)


def family_of(config: dict, where: str = "config.json") -> Family:
    archs = architectures_of(config, where)
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    got = ", ".join(archs) or f"none (model_type {config.get('model_type')!r})"
    raise UnsupportedModelError(f"{where}: architecture {got} is not supported; supported: {', '.join(FAMILIES)}")


_LAYER_LINEAR = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
_FIX = "config.json does not belong to these weights; fix it or re-download the model"
#: a piece width -> the config keys it is made of (for messages)
_SIZE_KEYS = {"q": (HEADS, "head_dim"), "kv": (KV_HEADS, "head_dim")}


def config_dims(config: dict, where: str = "config.json") -> dict[str, int]:
    """The dims of a config (positive ints), plus q/kv: the q and k/v projection widths."""
    dims = {}
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", HEADS, KV_HEADS, "head_dim"):
        v = config.get(key)
        if v is None and key in (KV_HEADS, "head_dim"):
            continue  # optional: default to num_attention_heads and hidden_size / num_attention_heads
        if type(v) is not int or v < 1:
            raise CheckpointError(
                f"{where}: {key} is {v!r}, not a positive integer; fix config.json or re-download the model"
            )
        dims[key] = v
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):  # MoE widths, where they exist
        if type(config.get(key)) is int and config[key] > 0:
            dims[key] = config[key]
    dims.setdefault(KV_HEADS, dims[HEADS])
    dims.setdefault("head_dim", dims["hidden_size"] // dims[HEADS])
    dims["q"] = dims[HEADS] * dims["head_dim"]
    dims["kv"] = dims[KV_HEADS] * dims["head_dim"]
    return dims


def spec_shape(spec: LinearSpec, dims: dict[str, int]) -> tuple[int, int]:
    """[N, K] of ``spec`` for the dims of :func:`config_dims`."""
    return sum(dims[p.size] for p in spec.n), dims[spec.k.size]


def piece_bounds(spec: LinearSpec, dims: dict[str, int]) -> list[tuple[int, int]]:
    """[start, stop) of each piece of ``spec``'s output rows."""
    out, start = [], 0
    for p in spec.n:
        out.append((start, start + dims[p.size]))
        start += dims[p.size]
    return out


def _keys(spec: LinearSpec) -> list[str]:
    keys = [k for p in (*spec.n, spec.k) for k in _SIZE_KEYS.get(p.size, (p.size,))]
    return list(dict.fromkeys(keys))


def check_dims(config: dict, shapes: dict[str, tuple[int, ...]], where: str = "config.json",
               files: dict[str, str] | None = None) -> None:
    """Fail at the start, not hours in, when config.json's dims disagree with the weights' shapes."""
    dims = config_dims(config, where)
    for name, shape in shapes.items():
        m = _LAYER_LINEAR.fullmatch(name)
        spec = linear_spec(m.group(2)) if m else None
        if spec is None:
            continue
        file = f" in {files[name]}" if files and name in files else ""
        if int(m.group(1)) >= dims["num_hidden_layers"]:
            raise CheckpointError(
                f"{where}: num_hidden_layers={dims['num_hidden_layers']} but {name}{file} exists; {_FIX}"
            )
        want = spec_shape(spec, dims)
        if tuple(shape) != want:
            said = ", ".join(f"{k}={dims[k]}" for k in _keys(spec))
            raise CheckpointError(f"{where}: {said} make {name} {list(want)}, but it is {list(shape)}{file}; {_FIX}")


@dataclass(frozen=True)
class Selection:
    """Which tensors to quantize: the family's linears (+ lm_head if asked) minus --ignore globs."""

    family: Family
    include_lm_head: bool = False
    ignore: tuple[str, ...] = ()

    def reason_skipped(self, name: str, ndim: int) -> str | None:
        """None if ``name`` is quantized, else why it is kept as is (recorded in the manifest)."""
        if not name.endswith(".weight") or ndim != 2:
            return "not a 2-D weight"
        module = name.removesuffix(".weight")
        for pat in self.ignore:
            if fnmatch.fnmatchcase(module, pat) or fnmatch.fnmatchcase(name, pat):
                return f"--ignore {pat}"
        if name == "lm_head.weight":
            return None if self.include_lm_head else "lm_head (pass --include-lm-head to quantize it)"
        if re.fullmatch(self.family.linear_pattern, name):
            return None
        return "not a decoder linear (embedding/norm/other)"
