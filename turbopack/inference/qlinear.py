"""QuantLinear: a linear layer whose weight stays quantized, in memory as on disk.

It holds either the arch-neutral tensors of a format (qweight/scales/zeros) or a layout's packed
tensors, as buffers named by their on-disk suffix, so a checkpoint tensor ``<module>.<suffix>``
loads straight into ``<module>``'s buffer. The backend is chosen once, at construction:

  reference  arch-neutral tensors, ``fmt.linear`` (the format's own math; any device)
  emulator   packed tensors on the CPU, ``turbopack.layouts.emulate.emulate_linear``
  cuda       packed tensors on the GPU, ``turbopack.inference.kernels.dispatch.linear``

No backend keeps a dense 16-bit copy of the weight. (The reference backend is the format's
definition and so dequantizes transiently inside each call; it is the yardstick, not a fast path.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from turbopack.errors import ShapeError, TurbopackError
from turbopack.formats import Format, TensorSpec
from turbopack.inference.config import Activation
from turbopack.inference.model import MLP, Attention
from turbopack.registry import Registry


def _reference(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    return m.fmt.linear(x, m.tensors(), m.bias)


def _weights_only(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    # x @ dequantize(W).T with x as given: what an 8-bit-activation format computes on an arch whose
    # layout upcasts the weights instead (fp8 on sm80), so that arch's rows have a reference
    return torch.nn.functional.linear(x, m.fmt.dequantize(m.tensors()).to(x.dtype), m.bias)


def _emulator(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    from turbopack.layouts.emulate import emulate_linear  # numba (~0.5 s to import): the CPU emulator only

    return emulate_linear(x, m.fmt, m.layout, m.tensors(), m.shape, bias=m.bias)


def _cuda(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    from turbopack.inference.kernels.dispatch import linear  # triton/CUDA: a GPU only

    return linear(x, m.fmt, m.layout, m.tensors(), m.shape, bias=m.bias)


class Backend(str, enum.Enum):
    """What runs a QuantLinear (values: the names --backend takes)."""

    REFERENCE = "reference"
    WEIGHTS_ONLY = "weights-only"  # the reference with the activations left in 16 bits
    EMULATOR = "emulator"
    CUDA = "cuda"


@dataclass(frozen=True)
class BackendSpec:
    forward: Callable[[QuantLinear, torch.Tensor], torch.Tensor]
    needs_layout: bool  # runs a layout's packed tensors (else the format's arch-neutral ones)


BACKENDS: Registry[BackendSpec] = Registry("linear backend")
BACKENDS.register(Backend.REFERENCE, BackendSpec(_reference, needs_layout=False))
BACKENDS.register(Backend.WEIGHTS_ONLY, BackendSpec(_weights_only, needs_layout=False))
BACKENDS.register(Backend.EMULATOR, BackendSpec(_emulator, needs_layout=True))
BACKENDS.register(Backend.CUDA, BackendSpec(_cuda, needs_layout=True))


def backend_of(name: str | Backend) -> Backend:
    """The Backend named ``name`` (an unknown name raises, listing the registered ones)."""
    BACKENDS.get(name)
    return Backend(getattr(name, "value", name))


class QuantLinear(nn.Module):
    """y = x @ W.T + b with W held quantized (see the module docstring for the backends)."""

    def __init__(self, fmt: Format, shape: tuple[int, int], *, layout=None, backend: str | Backend = Backend.REFERENCE,
                 bias: bool = False, device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        backend = backend_of(backend)
        spec = BACKENDS.get(backend)
        self._forward = spec.forward
        if spec.needs_layout and layout is None:
            raise TurbopackError(f"backend {backend.value!r} runs packed tensors; it needs a layout")
        if not spec.needs_layout and layout is not None:
            raise TurbopackError(f"backend {backend.value!r} runs arch-neutral tensors; got layout {layout.name.value}")
        self.fmt, self.layout, self.backend = fmt, layout, backend
        self.shape = (int(shape[0]), int(shape[1]))
        self.out_features, self.in_features = self.shape
        self.suffixes: list[str] = []
        for spec in self.specs():
            self.register_buffer(spec.suffix, torch.empty(spec.shape, dtype=spec.dtype, device=device))
            self.suffixes.append(spec.suffix)
        b = torch.empty(self.shape[0], dtype=dtype, device=device) if bias else None
        self.register_buffer("bias", b)

    def specs(self) -> list[TensorSpec]:
        if self.layout is None:
            return self.fmt.specs(self.shape)
        return self.layout.packed_specs(self.fmt, self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {s: getattr(self, s) for s in self.suffixes}

    @classmethod
    def from_tensors(cls, fmt: Format, shape, tensors: dict[str, torch.Tensor], *, layout=None,
                     backend: str | Backend = Backend.REFERENCE, bias: torch.Tensor | None = None) -> QuantLinear:
        """Wrap tensors already in memory (checked against the specs; nothing is copied)."""
        m = cls(fmt, shape, layout=layout, backend=backend, bias=bias is not None, device="meta",
                dtype=bias.dtype if bias is not None else torch.bfloat16)
        for spec in m.specs():
            t = tensors.get(spec.suffix)
            if t is None or t.dtype != spec.dtype or tuple(t.shape) != tuple(spec.shape):
                got = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise ShapeError(f"{spec.suffix}: got {got}, expected {spec.dtype} {list(spec.shape)}")
            setattr(m, spec.suffix, t)
        if bias is not None:
            m.bias = bias
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self, x)

    def glu(self, x: torch.Tensor, activation: Activation) -> torch.Tensor | None:
        """act(gate(x)) * up(x) of this fused [gate; up] in one kernel where the GPU backend has one
        for it (``kernels.dispatch.glu``), else None: the caller runs forward, then the activation."""
        if self.backend is not Backend.CUDA or x.device.type != "cuda":
            return None
        from turbopack.inference.kernels.dispatch import glu  # triton/CUDA: a GPU only

        return glu(x, self.fmt, self.layout, self.tensors(), self.shape, activation, bias=self.bias)

    def fold(self, x, activation: Activation | None = None, then: tuple | None = None):
        """This linear's decode with an RMSNorm folded in (``kernels.fold``) where the GPU backend
        has one for it (``kernels.dispatch.fold``), else None: x a Folded (read as the norm's output;
        ``activation``: the GLU, as ``glu``), or ``then`` = (residual, norm), whose add and norm this
        store performs: a Folded comes back."""
        z = getattr(x, "z", x)
        if self.backend is not Backend.CUDA or z.device.type != "cuda":
            return None
        from turbopack.inference.kernels.dispatch import fold  # triton/CUDA: a GPU only

        return fold(x, self.fmt, self.layout, self.tensors(), self.shape, self.bias, act=activation, then=then)

    def extra_repr(self) -> str:
        lay = f", layout={self.layout.name.value}" if self.layout is not None else ""
        return (
            f"{self.fmt.describe()}, shape={list(self.shape)}{lay}, backend={self.backend.value}, "
            f"bias={self.bias is not None}"
        )


def concat(mods: list[QuantLinear]) -> QuantLinear | None:
    """One QuantLinear computing the outputs of ``mods`` side by side (fused q/k/v or gate/up), or
    None when they cannot be fused: every tensor's first dimension must be whole output rows (or
    whole N tiles with no padding inside), and tensor-wide tensors (a per-tensor FP8 scale) equal."""
    first = mods[0]
    same = all(m.fmt == first.fmt and m.layout == first.layout and m.backend == first.backend
               and m.shape[1] == first.shape[1] and (m.bias is None) == (first.bias is None) for m in mods)
    if not same:
        return None
    if first.layout is not None and any(first.layout.padding(m.shape).n_pad != m.shape[0] for m in mods[:-1]):
        return None  # padding rows in the middle would shift the later modules' outputs
    shape = (sum(m.shape[0] for m in mods), first.shape[1])
    tensors = {}
    for spec in first.specs():
        parts = [getattr(m, spec.suffix) for m in mods]
        if spec.per_row:
            tensors[spec.suffix] = torch.cat(parts, 0)
        elif all(torch.equal(p, parts[0]) for p in parts[1:]):
            tensors[spec.suffix] = parts[0]
        else:
            return None
    bias = torch.cat([m.bias for m in mods]) if first.bias is not None else None
    try:  # a layout whose packed tensors do not stack along dim 0 fails its own shape check here
        return QuantLinear.from_tensors(
            first.fmt, shape, tensors, layout=first.layout, backend=first.backend, bias=bias
        )
    except ShapeError:
        return None


def _concat_any(mods: list[nn.Module]) -> nn.Module | None:
    if all(isinstance(m, QuantLinear) for m in mods):
        return concat(mods)
    return concat_linears(mods)


def fuse_projections(model: nn.Module, concat: Callable[[list[nn.Module]], nn.Module | None] | None = None) -> int:
    """Install attn.qkv_proj = concat([q, k, v]) and mlp.gate_up_proj = concat([gate, up]) where
    concat returns a module (None: leave that block unfused); the fused-away modules are dropped.
    Returns how many fused modules were installed. Default concat: QuantLinear modules through
    :func:`concat`, plain nn.Linear through :func:`concat_linears`."""
    concat = concat or _concat_any
    count = 0
    for module in list(model.modules()):  # listed first: we add and remove submodules below
        if isinstance(module, Attention) and module.qkv_proj is None:
            names = ("q_proj", "k_proj", "v_proj")
            fused = concat([getattr(module, n) for n in names])
            if fused is not None:
                module.qkv_proj = fused
        elif isinstance(module, MLP) and module.gate_up_proj is None:
            names = ("gate_proj", "up_proj")
            fused = concat([getattr(module, n) for n in names])
            if fused is not None:
                module.gate_up_proj = fused
        else:
            continue
        if fused is not None:
            for n in names:
                delattr(module, n)
            count += 1
    return count


def concat_linears(mods: list[nn.Module]) -> nn.Linear | None:
    """concat for plain nn.Linear modules (the unquantized model)."""
    if not all(type(m) is nn.Linear for m in mods) or len({m.bias is None for m in mods}) > 1:
        return None
    w = torch.cat([m.weight for m in mods])
    fused = nn.Linear(w.shape[1], w.shape[0], bias=mods[0].bias is not None, device="meta", dtype=w.dtype)
    fused.weight = nn.Parameter(w, requires_grad=False)
    if mods[0].bias is not None:
        fused.bias = nn.Parameter(torch.cat([m.bias for m in mods]), requires_grad=False)
    return fused
