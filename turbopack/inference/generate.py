"""Prefill then decode, one token per step, with the decode step replayed from a CUDA graph.

The model's static KV cache makes every decode step the same kernels on the same buffers: the
token and its position live in two small device tensors that the step reads, so one graph,
captured once per (batch, max_seq), serves every position. Sampling runs after the graph on the
device; the host reads each token one step late (pinned copy + event), so the GPU is already
running step i+1 while the host streams token i.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from turbopack.errors import UnsupportedModelError
from turbopack.inference.kernels.graph_capture import capture
from turbopack.inference.kernels.interpret import interpreting
from turbopack.inference.kv_quant import KV_FORMATS, cache_factory
from turbopack.inference.model import Transformer
from turbopack.inference.moe import MoE
from turbopack.inference.sampling import SamplingParams, sample

SEQ_ROUND = 256  # caches are sized in these steps, so a slightly longer prompt reuses the graph


@dataclass
class GenerationStats:
    batch: int
    prompt_tokens: int
    new_tokens: int  # per sequence, including the one sampled from the prefill
    prefill_s: float
    decode_s: float
    cuda_graph: bool
    kv: str

    @property
    def prefill_tok_s(self) -> float:
        return self.batch * self.prompt_tokens / max(self.prefill_s, 1e-9)

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second of the decode steps (the prefill's first token not counted)."""
        return self.batch * max(self.new_tokens - 1, 0) / max(self.decode_s, 1e-9)

    def as_dict(self) -> dict:
        return {"batch": self.batch, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "prefill_tok_s": round(self.prefill_tok_s, 1), "decode_tok_s": round(self.decode_tok_s, 1),
                "cuda_graph": self.cuda_graph, "kv": self.kv}


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor


@dataclass
class Engine:
    """Owns the model's caches and decode graph. ``kv``: bf16 | int8 | int4."""

    model: Transformer
    kv: str = "bf16"
    kv_backend: str | None = None  # "triton" on GPU, "torch" on CPU by default
    use_graphs: bool | None = None
    fast: bool | None = None  # fastpath.forward (fused glue kernels); default: where supported
    _shape: tuple[int, int] | None = field(default=None, init=False)
    _graph: _Graph | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        KV_FORMATS.get(self.kv)  # unknown precisions fail here, listing the known ones
        self.device = self.model.model.embed_tokens.weight.device
        cuda = self.device.type == "cuda"
        self.kv_backend = self.kv_backend or ("triton" if cuda else "torch")
        # MoE routing picks experts by the data: the per-expert loop's shapes vary step to step (no
        # CUDA graph for it); the grouped kernels' grids and buffers do not (moe_grouped)
        static = self.model.config.moe is None or all(
            m.grouped is not None for m in self.model.modules() if isinstance(m, MoE))
        if self.use_graphs and cuda and not static:
            raise ValueError("CUDA graphs need a step of fixed shapes; MoE routing is data-dependent: "
                             "use_graphs=False")
        self.use_graphs = (cuda and static) if self.use_graphs is None else (self.use_graphs and cuda)
        self._tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        if self.fast is None and not cuda and not interpreting():
            self.fast = False  # fastpath's kernels are Triton's: importing them (and triton) would be wasted here
        if self.fast is None or self.fast:
            from turbopack.inference import fastpath

            ok = fastpath.supported(self.model)
            if self.fast and not ok:
                raise ValueError("fastpath needs fused projections and a GPU (or TRITON_INTERPRET=1)")
            self.fast = ok
        self._forward = self._fast_forward if self.fast else self.model

    def _fast_forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from turbopack.inference.fastpath import forward

        return forward(self.model, ids, pos)

    def reserve(self, batch: int, seq_len: int) -> None:
        """Caches for batch x seq_len (reused, graph and all, while they are big enough)."""
        if self._shape is not None and self._shape[0] == batch and self._shape[1] >= seq_len:
            return
        max_seq = math.ceil(seq_len / SEQ_ROUND) * SEQ_ROUND
        window = self.model.config.sliding_window
        if window is not None:  # attention never reaches past the window: no cache beyond it
            if seq_len > window:
                raise UnsupportedModelError(f"prompt + new tokens = {seq_len} tokens exceed the model's sliding_window "
                                            f"{window}; shorten the prompt or lower --max-new-tokens")
            max_seq = min(max_seq, window)
        self._graph = None  # it pointed into the old caches
        self.model.kv_caches = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.model.setup_caches(batch, max_seq, cache_cls=cache_factory(self.kv, self.kv_backend))
        self._shape = (batch, max_seq)
        self._tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids [B, T] at positions start.. -> last position's logits [B, V] (float32)."""
        pos = torch.arange(start, start + ids.shape[1], device=self.device)
        return self._forward(ids.to(self.device), pos)[:, -1]

    def _step(self) -> torch.Tensor:
        return self._forward(self._tok, self._pos)[:, -1]

    def _capture(self) -> _Graph:
        # Warm-up on a side stream (JIT compiles, allocator pools); it writes the K/V of the step
        # about to run, with the same values the replay writes, so it leaves nothing wrong behind.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with capture(graph):
            logits = self._step()
        return _Graph(graph, logits)

    @torch.no_grad()
    def decode(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        """One step: tokens [B] at position pos -> logits [B, V]. No host sync."""
        self._tok.copy_(tok.view(-1, 1))
        self._pos.fill_(pos)
        if not self.use_graphs:
            return self._step()
        if self._graph is None:
            self._graph = self._capture()
        self._graph.graph.replay()
        return self._graph.logits

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, params: SamplingParams = SamplingParams(),
                 stop_ids: Sequence[int] = (), on_tokens: Callable[[list[int]], None] | None = None,
                 ) -> tuple[torch.Tensor, GenerationStats]:
        """ids [B, P] -> (new tokens [B, n] with n <= max_new_tokens, stats). ``on_tokens`` gets each
        step's tokens (one per sequence) as they become known; generation stops early once every
        sequence has produced a stop id (the stop id is kept)."""
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"ids must be [batch, prompt_len >= 1], got {tuple(ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        b, p = ids.shape
        self.reserve(b, p + max_new_tokens)
        gen = params.generator(self.device)
        out = torch.empty(b, max_new_tokens, dtype=torch.long, device=self.device)
        self._sync()
        t0 = time.perf_counter()
        tok = sample(self.prefill(ids), params, gen)
        out[:, 0] = tok
        self._sync()
        t1 = time.perf_counter()
        reader = _LaggedReader(out, self.device, stop_ids, on_tokens)
        reader.push(0)
        if max_new_tokens > 1 and self.use_graphs and self._graph is None:
            self._tok.copy_(tok.view(-1, 1))
            self._pos.fill_(p)
            self._graph = self._capture()  # outside the decode timer; the first step replays it
            self._sync()
            t1 = time.perf_counter()
        n = 1
        for i in range(1, max_new_tokens):
            if reader.stopped:
                break
            tok = sample(self.decode(tok, p + i - 1), params, gen)
            out[:, i] = tok
            n = i + 1
            reader.push(i)
        reader.flush()
        self._sync()
        t2 = time.perf_counter()
        n = min(n, reader.stop_at or n)
        stats = GenerationStats(b, p, n, t1 - t0, t2 - t1, bool(self.use_graphs), self.kv)
        return out[:, :n].cpu(), stats


class _LaggedReader:
    """Hands each step's tokens to the host one step late, so reading never stalls the GPU queue."""

    def __init__(self, out: torch.Tensor, device: torch.device, stop_ids, on_tokens):
        self.out, self.stop_ids, self.on_tokens = out, set(stop_ids), on_tokens
        self.active = bool(self.stop_ids) or on_tokens is not None
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[int, torch.Tensor, object]] = []
        self.done = torch.zeros(out.shape[0], dtype=torch.bool)
        self.stopped, self.stop_at = False, None

    def push(self, i: int) -> None:
        if not self.active:
            return
        if self.cuda:
            host = torch.empty(self.out.shape[0], dtype=torch.long, pin_memory=True)
            host.copy_(self.out[:, i], non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            self.pending.append((i, host, ev))
            if len(self.pending) > 1:
                self._emit(*self.pending.pop(0))
        else:
            self._emit(i, self.out[:, i].clone(), None)

    def flush(self) -> None:
        while self.pending:
            self._emit(*self.pending.pop(0))

    def _emit(self, i: int, host: torch.Tensor, ev) -> None:
        if self.stop_at is not None:
            return
        if ev is not None:
            ev.synchronize()
        toks = host.tolist()
        if self.on_tokens is not None:
            self.on_tokens(toks)
        if self.stop_ids:
            self.done |= torch.tensor([t in self.stop_ids for t in toks])
            if bool(self.done.all()):
                self.stopped, self.stop_at = True, i + 1
