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
from turbopack.packer.families import family_of

EMBED = "model.embed_tokens.weight"
Q, K, V, O = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"  # noqa: E741 (q k v o)
GATE, UP, DOWN = "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
#: linears of a block grouped by shared input, in forward order
STAGES = ((Q, K, V), (O,), (GATE, UP), (DOWN,))


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


def block_param_names(cfg: ModelConfig) -> list[str]:
    with torch.device("meta"):
        return list(Block(cfg).state_dict())


def block_config(ckpt: Checkpoint) -> ModelConfig:
    """The block structure of a Llama-family checkpoint; anything else is unsupported."""
    where = str(ckpt.folder / "config.json")
    family_of(ckpt.config, where)
    try:
        cfg = ModelConfig.from_hf_config(ckpt.config)
    except KeyError as e:
        raise UnsupportedModelError(f"{where}: no {e.args[0]!r}; calibration needs a Llama-style config") from None
    expected = block_param_names(cfg)
    for i in range(cfg.n_layers):
        missing = [n for n in expected if layer_prefix(i) + n not in ckpt.tensors]
        if missing:
            raise UnsupportedModelError(
                f"{ckpt.folder}: {layer_prefix(i)}{missing[0]} missing; calibrated methods need "
                f"the Llama block structure (use --method rtn)"
            )
    if EMBED not in ckpt.tensors:
        raise UnsupportedModelError(
            f"{ckpt.folder}: no {EMBED}; calibrated methods need the Llama structure (use --method rtn)"
        )
    return cfg


@torch.no_grad()
def load_block(ckpt: Checkpoint, cfg: ModelConfig, i: int, device: torch.device) -> Block:
    """Layer ``i`` in float32 on ``device``; nothing else of the model is read."""
    with torch.device("meta"):
        block = Block(cfg)
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
def embed(ckpt: Checkpoint, ids: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32
          ) -> torch.Tensor:
    """Embedding rows of ``ids`` [n, L] -> ``dtype`` [n, L, hidden] on ``device``, reading the table in
    row chunks (the output is filled in place: no second copy of it on either side)."""
    hidden = ckpt.tensors[EMBED].shape[1]
    ids = ids.cpu()
    out = torch.empty(*ids.shape, hidden, dtype=dtype, device=device)
    for start, rows in ckpt.iter_row_chunks(EMBED):
        m = (ids >= start) & (ids < start + rows.shape[0])
        out[m.to(device)] = rows.to(device=device, dtype=dtype)[(ids[m] - start).to(device)]
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
    ``modified``: local names of plain tensors a fold changed (written in place of the source's).
    """

    block: Block
    x: torch.Tensor
    runner: BlockRunner
    fmt: Format
    quantize: frozenset[str]
    store_dtype: torch.dtype
    modified: dict[str, str] = field(default_factory=dict)

    def linear(self, name: str) -> nn.Linear:
        return self.block.get_submodule(name)


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

    def stats_tap(self, keep: bool = True) -> StatsTap:
        return StatsTap(self.sample_seqs if keep else 0)

    @torch.no_grad()
    def forward(self, block: Block, x: torch.Tensor) -> None:
        """Replace ``x`` by the block's output, ``batch_size`` sequences at a time: a sequence's output
        depends on that sequence only, so one buffer serves as input and output; the block computes
        in float32 and each chunk is stored back in x's dtype."""
        for b0 in range(0, x.shape[0], self.batch_size):
            chunk = x[b0:b0 + self.batch_size]
            chunk.copy_(block(chunk.float(), self.cos, self.sin))

    @torch.no_grad()
    def capture(self, block: Block, x: torch.Tensor, taps: dict[str, Tap]) -> None:
        """Run the block over ``x`` feeding each named linear's input to its tap; the pass stops
        after the last tapped linear of the forward order (the rest would be thrown away)."""
        order = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        last = max(taps, key=order.index)
        with _hooks(block, taps, last) as seq:
            for b0 in range(0, x.shape[0], self.batch_size):
                seq[0] = b0
                with contextlib.suppress(_Stop):
                    block(x[b0:b0 + self.batch_size].float(), self.cos, self.sin)


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

