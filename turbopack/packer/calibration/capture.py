"""Block-by-block execution on the calibration batch, and taps that record linear inputs.

Only one decoder block is ever materialised: :func:`load_block` reads its tensors lazily from the
safetensors shards into the reference model's :class:`Block`; :class:`BlockRunner` runs it over the
calibration batch (a few sequences at a time, so attention scratch stays small) and, while doing
so, lets taps (forward pre-hooks on chosen linears) accumulate what a method needs: a Hessian
(GPTQ), or per-channel statistics and a fixed token sample (AWQ, SmoothQuant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from turbopack.checkpoint import Checkpoint
from turbopack.errors import UnsupportedModelError
from turbopack.formats import Format, check_finite
from turbopack.inference.model import Block, ModelConfig, rope_tables
from turbopack.inference.moe import MoE
from turbopack.packer.families import Family, ScaleGroup, block_groups, block_stages, family_of

EMBED = "model.embed_tokens.weight"


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


def block_param_names(cfg: ModelConfig, layer: int = 0) -> list[str]:
    with torch.device("meta"):
        return list(Block(cfg, layer).state_dict())


def block_dims(cfg: ModelConfig) -> dict[str, int]:
    """The widths a family's :class:`~turbopack.packer.families.Piece` s name, for this config."""
    return {"q": cfg.n_heads * cfg.head_dim, "kv": cfg.n_kv_heads * cfg.head_dim, "hidden_size": cfg.hidden,
            "intermediate_size": cfg.intermediate}


def block_config(ckpt: Checkpoint) -> ModelConfig:
    """The block structure of a checkpoint of a supported family; anything else is unsupported."""
    where = str(ckpt.folder / "config.json")
    family_of(ckpt.config, where)
    try:
        cfg = ModelConfig.from_hf_config(ckpt.config)
    except KeyError as e:
        raise UnsupportedModelError(f"{where}: no {e.args[0]!r}; calibration needs a Llama-style config") from None
    for i in range(cfg.n_layers):
        missing = [n for n in block_param_names(cfg, i) if layer_prefix(i) + n not in ckpt.tensors]
        if missing:
            raise UnsupportedModelError(
                f"{ckpt.folder}: {layer_prefix(i)}{missing[0]} missing; calibrated methods need "
                f"the family's block structure (use --method rtn)"
            )
    if EMBED not in ckpt.tensors:
        raise UnsupportedModelError(
            f"{ckpt.folder}: no {EMBED}; calibrated methods need the family's structure (use --method rtn)"
        )
    return cfg


@torch.no_grad()
def load_block(ckpt: Checkpoint, cfg: ModelConfig, i: int, device: torch.device) -> Block:
    """Layer ``i`` in float32 on ``device``; nothing else of the model is read."""
    with torch.device("meta"):
        block = Block(cfg, i)
    state = {}
    for n in block.state_dict():
        name = layer_prefix(i) + n
        state[n] = ckpt.read(name).to(device=device, dtype=torch.float32)
        check_finite(f"{ckpt.location[name].name}:{name}", state[n])
    block.load_state_dict(state, assign=True)
    for p in block.parameters():
        p.requires_grad_(False)
    return block.eval()


def hidden_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The dtype the calibration hidden states are stored in between blocks: bfloat16 for a 16-bit
    model (the precision the runtime's residual stream has; bf16 for an fp16 checkpoint too, whose
    range float32's is, so no stored activation can overflow to inf), float32 for a float32 one.
    At 128 x 2048 tokens of an 8B model float32 is 4.3 GB a copy; the blocks compute in float32."""
    dtype = ckpt.tensors[EMBED].dtype
    return torch.bfloat16 if dtype in (torch.bfloat16, torch.float16) else torch.float32


@torch.no_grad()
def embed(ckpt: Checkpoint, ids: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
          scale: float | None = None, pin: bool = False) -> torch.Tensor:
    """Embedding rows of ``ids`` [n, L] -> ``dtype`` [n, L, hidden] on ``device``, reading the table in
    row chunks (the output is filled in place: no second copy of it on either side); ``scale``
    (Gemma's sqrt(hidden)) is applied as the model does, rounded to the table's dtype; ``pin``: in
    page-locked host memory (``device`` the CPU), which the GPU reads and writes asynchronously."""
    entry = ckpt.tensors[EMBED]
    mul = torch.tensor(scale, dtype=entry.dtype).float() if scale is not None else None
    ids = ids.cpu()
    out = torch.empty(*ids.shape, entry.shape[1], dtype=dtype, device=device, pin_memory=pin)
    for start, rows in ckpt.iter_row_chunks(EMBED):
        m = (ids >= start) & (ids < start + rows.shape[0])
        picked = rows.to(device)[(ids[m] - start).to(device)]
        out[m.to(device)] = (picked.float() * mul).to(dtype) if mul is not None else picked.to(dtype)
    return out


class Tap:
    """Receives the inputs of one linear, ``x`` [b, t, K], for sequences ``seq0 .. seq0 + b``."""

    def add(self, x: torch.Tensor, seq0: int) -> None:
        raise NotImplementedError


@dataclass
class HessianTap(Tap):
    """H = 2/n * sum x x^T over all n calibration tokens (GPTQ's layer-wise Hessian)."""

    h: torch.Tensor | None = None
    n: int = 0

    def add(self, x, seq0):
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.h = x2.T @ x2 if self.h is None else self.h.addmm_(x2.T, x2)
        self.n += x2.shape[0]

    def hessian(self) -> torch.Tensor:
        """H, scaled in place (an 8B down_proj's is 0.82 GB: no second copy)."""
        return self.h.mul_(2.0 / self.n)


@dataclass
class StatsTap(Tap):
    """Per-channel max|x| and mean|x| over all tokens, plus the whole inputs of the first
    ``keep_seqs`` sequences (the batch is in seeded random order already): whole sequences, so a
    method can re-run attention on them."""

    keep_seqs: int = 0
    absmax: torch.Tensor | None = None
    abssum: torch.Tensor | None = None
    n: int = 0
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, x, seq0):
        xf = x.float()
        a = xf.abs().reshape(-1, x.shape[-1])
        self.absmax = a.amax(0) if self.absmax is None else torch.maximum(self.absmax, a.amax(0))
        self.abssum = a.sum(0) if self.abssum is None else self.abssum + a.sum(0)
        self.n += a.shape[0]
        if seq0 < self.keep_seqs:
            self.samples.append(xf[: self.keep_seqs - seq0].clone())

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / self.n

    def sample(self) -> torch.Tensor:
        """[keep_seqs, seq_len, K]"""
        return torch.cat(self.samples)


@dataclass
class BlockJob:
    """One block being calibrated: what every method receives.

    ``quantize``: local names of the linears to quantize (the rest stay float but are still folded);
    ``modified``: local names of plain tensors a fold changed (written in place of the source's);
    ``family``: which linears share an input and what produces it (turbopack.packer.families).
    """

    family: Family
    block: Block
    x: torch.Tensor
    runner: BlockRunner
    fmt: Format
    quantize: frozenset[str]
    store_dtype: torch.dtype
    modified: dict[str, str] = field(default_factory=dict)

    def linear(self, name: str) -> nn.Linear:
        return self.block.get_submodule(name)

    def stages(self) -> list[tuple[str, ...]]:
        """The family's GPTQ stages, expanded for this block (its experts, its dense MLP)."""
        return block_stages(self.family, {n for n, _ in self.block.named_modules()})

    def groups(self) -> list[ScaleGroup]:
        """The family's scale groups, expanded for this block."""
        return block_groups(self.family, {n for n, _ in self.block.named_modules()})


class _Stop(Exception):
    """Raised by the last tap: nothing after it in the block is needed for this pass."""


@dataclass
class BlockRunner:
    cfg: ModelConfig
    seq_len: int
    device: torch.device
    batch_size: int = 8
    sample_seqs: int = 0  # sequences a StatsTap keeps whole

    def __post_init__(self) -> None:
        self.cos, self.sin = rope_tables(self.cfg, self.seq_len, self.device)
        self.local = rope_tables(self.cfg, self.seq_len, self.device, local=True) \
            if self.cfg.local_rope_theta is not None else (self.cos, self.sin)

    def rope(self, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """The cos/sin tables ``block`` rotates with (Gemma 3's sliding layers have their own)."""
        return self.local if block.self_attn.local_rope else (self.cos, self.sin)

    def stats_tap(self, keep: bool = True) -> StatsTap:
        return StatsTap(self.sample_seqs if keep else 0)

    def _chunk(self, x: torch.Tensor, b0: int) -> torch.Tensor:
        """Sequences b0 .. b0 + batch_size of x as float32 on the runner's device (x may live in
        pinned host memory: the hidden states of a GPU run, see pipeline.hidden_home)."""
        return x[b0:b0 + self.batch_size].to(self.device, non_blocking=True).float()

    @torch.no_grad()
    def forward(self, block: Block, x: torch.Tensor) -> None:
        """Replace ``x`` by the block's output, ``batch_size`` sequences at a time: a sequence's output
        depends on that sequence only, so one buffer serves as input and output; the block computes
        in float32 and each chunk is stored back in x's dtype (and place)."""
        for b0 in range(0, x.shape[0], self.batch_size):
            # rounded to x's dtype where the block ran: a float32 -> bf16 copy into host memory would
            # convert on the CPU (4.3 GB of float32 per block pass at the 8B shape, seconds)
            x[b0:b0 + self.batch_size].copy_(block(self._chunk(x, b0), *self.rope(block)).to(x.dtype))

    @torch.no_grad()
    def capture(self, block: Block, x: torch.Tensor, taps: dict[str, Tap]) -> None:
        """Run the block over ``x`` feeding each named linear's input to its tap; the pass stops
        after the last tapped linear of the forward order (the rest would be thrown away)."""
        order = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        last = max(taps, key=order.index)
        with _hooks(block, taps, last) as seq, _all_experts(block):
            for b0 in range(0, x.shape[0], self.batch_size):
                seq[0] = b0
                with contextlib.suppress(_Stop):
                    block(self._chunk(x, b0), *self.rope(block))


@contextlib.contextmanager
def parked(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters in host memory inside the ``with`` (pinned, so both copies run at
    PCIe speed: 0.87 GB of an 8B block's float32 weights, ~40 ms each way), back on their device
    after it, with whatever was written into them meanwhile. For work that needs one weight at a
    time on the device (GPTQ's factorizations: 2 K x K beside one weight instead of beside the
    whole block); on the CPU nothing moves."""
    params = [p for p in module.parameters() if p.device.type == "cuda"]
    homes = [p.device for p in params]
    for p in params:
        host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
        host.copy_(p.data)
        p.data = host
    try:
        yield
    finally:
        for p, home in zip(params, homes, strict=True):
            p.data = p.data.to(home, non_blocking=True)


@contextlib.contextmanager
def _all_experts(block: Block) -> Iterator[None]:
    """Every calibration token through every expert while statistics are taken, so each expert's
    linears are calibrated on the whole batch (routing would leave rare experts a handful of tokens,
    or none); the block's output still mixes only the routed experts."""
    moes = [m for m in block.modules() if isinstance(m, MoE)]
    for m in moes:
        m.all_experts = True
    try:
        yield
    finally:
        for m in moes:
            m.all_experts = False


@contextlib.contextmanager
def _hooks(block: Block, taps: dict[str, Tap], last: str) -> Iterator[list[int]]:
    seq = [0]
    handles = []
    for name, tap in taps.items():
        def hook(mod, args, tap=tap, stop=name == last):
            tap.add(args[0], seq[0])
            if stop:
                raise _Stop
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        yield seq
    finally:
        for h in handles:
            h.remove()

