"""GPTQ's memory (issue 10): what a block step keeps alive, counted on the CPU by a dispatch mode
over every storage torch's ops create, and the GPU peak bound (``-m gpu``).

The accounting (docs/quality.md, "Calibration on the GPU"): a stage's linears share one Hessian
H [K, K]; each linear orders a column-major copy A of it (gathered a slice at a time), factors A in
place, and the last linear's call frees H once A exists. So at most H (while more linears of the
stage remain) + A + one more K x K (cuSOLVER's clone on a GPU, the retry backup on the CPU) exist."""

from __future__ import annotations

import shutil
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from turbopack.checkpoint import Checkpoint
from turbopack.device import PeakMemory
from turbopack.formats import get_format
from turbopack.packer.calibration.capture import BlockJob, BlockRunner, block_config, embed, load_block, parked
from turbopack.packer.calibration.gptq import (
    GPTQConfig,
    gptq_block,
    gptq_quantize,
    inverse_hessian_factor,
    ordered_hessian,
)
from turbopack.packer.calibration.grid import grid_for
from turbopack.packer.families import family_of
from turbopack.packer.synthetic import llama_config, write_synthetic

HIDDEN, INTER, SEQ, SEQS = 64, 1024, 32, 6  # I x I (4.2 MB) outweighs everything else of the block step


class SquareMeter(TorchDispatchMode):
    """Live bytes of the storages ops create (peak), the most (K, K) float32 storages alive at once
    for each watched K, and every advanced-indexing call whose broadcast indices have K x K or more
    elements (on a GPU torch makes each such index tensor contiguous: K x K int64 apiece)."""

    def __init__(self, watch: tuple[int, ...]) -> None:
        super().__init__()
        self.watch = watch
        self.live: dict[int, tuple[int, int | None]] = {}
        self.now = self.peak = 0
        self.most = dict.fromkeys(watch, 0)
        self.big_gathers: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default):
            idx = [i for i in args[1] if i is not None]
            if len(idx) >= 2 and torch.broadcast_shapes(*(i.shape for i in idx)).numel() >= min(self.watch) ** 2:
                self.big_gathers.append(str(func))
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._see(t)
        return out

    def _see(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.live:
            return
        square = t.shape[0] if t.dim() == 2 and t.shape[0] == t.shape[1] and t.shape[0] in self.watch \
            and t.dtype == torch.float32 and storage.nbytes() == t.numel() * 4 else None
        self.live[ptr] = (storage.nbytes(), square)
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        if square is not None:
            alive = sum(1 for _, k in self.live.values() if k == square)
            self.most[square] = max(self.most[square], alive)
        weakref.finalize(storage, self._free, ptr)

    def _free(self, ptr: int) -> None:
        self.now -= self.live.pop(ptr, (0, None))[0]


@pytest.fixture(scope="module")
def block_job(calib_model, tmp_path_factory):
    """A Llama block whose MLP is 8x wider than its hidden size, ready for gptq_block."""
    folder = write_synthetic(tmp_path_factory.mktemp("gm") / "llama", llama_config(HIDDEN, INTER, 1, 4, 2, vocab=128))
    shutil.copy(calib_model / "tokenizer.json", folder / "tokenizer.json")
    ckpt = Checkpoint.open(folder)
    cfg = block_config(ckpt)
    ids = torch.randint(0, 128, (SEQS, SEQ), generator=torch.Generator().manual_seed(0))
    x = embed(ckpt, ids, torch.device("cpu"), torch.bfloat16)

    def make() -> BlockJob:
        block = load_block(ckpt, cfg, 0, torch.device("cpu"))
        names = frozenset(n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear))
        runner = BlockRunner(cfg, SEQ, torch.device("cpu"), batch_size=1)
        return BlockJob(family_of(ckpt.config), block, x, runner, get_format("w4a16", group_size=32), names,
                        torch.bfloat16)

    return make


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_block_holds_two_down_proj_hessians_at_most(block_job, act_order):
    """down_proj (K = INTER): its H, then H + the ordered A, then A + the backup; never a third I x I
    (the old code had 3: the ordered copy, the backup and cholesky_inverse's fresh output) and never
    a 2-D gather with K x K index tensors (3.3 GB at K = 14336 on a GPU). q/k/v and gate/up
    (K = HIDDEN) share one H per stage instead of one clone per linear."""
    job = block_job()
    meter = SquareMeter((INTER,))
    with meter:
        out = gptq_block(job, GPTQConfig(act_order=act_order))
    assert sorted(out) == sorted(job.quantize)
    assert meter.most[INTER] == 2, meter.most
    assert not meter.big_gathers, meter.big_gathers


def test_gptq_block_peak_is_bounded_by_the_shapes(block_job):
    """Peak bytes of the block step <= the block + max(capture, factorization) from the shapes, below
    the three I x I the old accounting held (the meter counts the block's weights once an op
    touches them, so they are in the bound)."""
    job = block_job()
    kk = INTER * INTER * 4
    w_down = HIDDEN * INTER * 4
    block = sum(p.numel() * 4 for p in job.block.parameters())
    scratch = SEQ * (4 * INTER + 8 * HIDDEN) * 4  # one sequence through the block, float32
    with PeakMemory(torch.device("cpu")) as mem:
        gptq_block(job, GPTQConfig())
    bound = block + max(kk + scratch, 2 * kk + 2 * kk // 64 + 3 * w_down) + (64 << 10)
    assert mem.peak <= bound < 3 * kk, (mem.peak, bound)


def test_ordered_hessian_is_a_column_major_permuted_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g) * torch.linspace(0.2, 3, 40)
    x[:, 5] = 0
    h = x.T @ x
    before = h.clone()
    dead = torch.diag(h) == 0
    a, perm = ordered_hessian(h, dead, act_order=True)
    assert torch.equal(h, before)  # only read: a stage's linears share it
    assert a.mT.is_contiguous() and a.data_ptr() != h.data_ptr()
    want = h[perm][:, perm]
    want.diagonal().copy_(torch.where(dead, 1.0, h.diagonal())[perm])
    assert torch.equal(a, want)
    assert torch.equal(perm, torch.argsort(torch.where(dead, 1.0, h.diagonal()), descending=True, stable=True))


@pytest.mark.parametrize("act_order", [True, False])
def test_shared_and_handed_over_hessians_give_the_same_bits(act_order):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 128, generator=g) * torch.linspace(0.1, 2, 128)
    h = 2 * x.T @ x / 400
    w = torch.randn(24, 128, generator=g)
    grid = grid_for(get_format("w4a16", group_size=32), "gptq")
    kept = h.clone()
    shared = gptq_quantize(w, h, grid, GPTQConfig(act_order=act_order))
    assert torch.equal(h, kept)
    box = [h]
    given = gptq_quantize(w, box, grid, GPTQConfig(act_order=act_order))
    assert box == [] and torch.equal(shared[0], given[0])
    assert all(torch.equal(shared[1][k], given[1][k]) for k in shared[1])


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                  reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act_order", [True, False])
def test_in_place_factor_is_the_textbook_factor_bit_for_bit(device, act_order):
    """The in-place, column-major factorization gives exactly the bits of the plain formulation
    with fresh outputs (a 2-D gather, cholesky, cholesky_inverse, cholesky upper): the same
    LAPACK / cuSOLVER calls on the same column-major values, only without the copies."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(700, 384, generator=g) * torch.linspace(0.1, 4, 384)
    x[:, 3] = 0
    h = (2 * x.T @ x / 700).to(device)
    dead = torch.diag(h) == 0
    diag = torch.where(dead, 1.0, torch.diag(h))
    perm = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(384, device=device)
    ref = h[perm[:, None], perm[None, :]]
    ref.diagonal().copy_(diag[perm])
    # the mean of the diagonal as a contiguous vector, as inverse_hessian_factor takes it: a vectorized
    # reduction sums a strided view in another order (AVX-512 machines: the last bit of damp differed)
    damp = 0.01 * float(torch.mean(ref.diagonal().contiguous()))
    ref.diagonal().add_(damp)
    want = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(ref)), upper=True)
    a, got_perm = ordered_hessian(h, dead, act_order)
    got = inverse_hessian_factor([a], 0.01)
    assert torch.equal(got_perm, perm)
    if device == "cpu":
        assert torch.equal(got, want)
    else:  # cuSOLVER's blocking follows the operand's layout: the same factor up to fp32 rounding (H200:
        # bit-equal with act-order, not without)
        assert ((got - want).abs().max() <= 1e-5 * want.abs().max()).item()


def test_parked_is_a_no_op_on_the_cpu():
    lin = torch.nn.Linear(4, 3)
    ptr = lin.weight.data_ptr()
    with parked(lin):
        assert lin.weight.data_ptr() == ptr
    assert lin.weight.data_ptr() == ptr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parked_moves_the_weights_out_and_back_with_writes():
    dev = torch.device("cuda", torch.cuda.current_device())
    lin = torch.nn.Linear(1024, 2048, device=dev)
    want = torch.randn(2048, 1024, device=dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.no_grad(), parked(lin):  # as calibration runs it
        assert lin.weight.device.type == "cpu" and lin.weight.is_pinned()
        assert torch.cuda.memory_allocated(dev) <= base - lin.weight.numel() * 4
        lin.weight.copy_(want)
    assert lin.weight.device == dev and isinstance(lin.weight, torch.nn.Parameter)
    assert torch.equal(lin.weight, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_device_peak_is_the_shapes_bound(tmp_path, act_order):
    """On a GPU (the block parked while a stage is quantized): the block step's allocator peak <=
    max(block + I x I + one sequence's scratch, 2 I x I + 3 H x I) + 32 MB; the old code's K x K
    int64 gather indices alone were 4 I x I."""
    hidden, inter, seq = 512, 4096, 256
    folder = write_synthetic(tmp_path / "llama", llama_config(hidden, inter, 1, 8, 2, vocab=128))
    ckpt = Checkpoint.open(folder)
    cfg = block_config(ckpt)
    dev = torch.device("cuda", torch.cuda.current_device())
    x = embed(ckpt, torch.randint(0, 128, (8, seq), generator=torch.Generator().manual_seed(0)),
              torch.device("cpu"), torch.bfloat16, pin=True)
    block = load_block(ckpt, cfg, 0, dev)
    block_bytes = sum(p.numel() * 4 for p in block.parameters())
    names = frozenset(n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear))
    job = BlockJob(family_of(ckpt.config), block, x, BlockRunner(cfg, seq, dev, batch_size=1),
                   get_format("w4a16", group_size=128), names, torch.bfloat16)
    kk, w_down = inter * inter * 4, hidden * inter * 4
    scratch = seq * (4 * inter + 8 * hidden) * 4
    warm = torch.eye(64, device=dev)  # cuBLAS's and cuSOLVER's handles and workspaces: made once a process
    torch.linalg.cholesky(warm @ warm)
    del warm
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev) - block_bytes
    torch.cuda.reset_peak_memory_stats(dev)
    gptq_block(job, GPTQConfig(act_order=act_order))
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    bound = max(block_bytes + kk + scratch, 2 * kk + 3 * w_down) + (32 << 20)
    assert peak <= bound, (peak / 1e6, bound / 1e6)
