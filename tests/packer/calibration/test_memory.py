"""Calibration's memory: the hidden states between blocks are one buffer in the model's 16-bit
dtype, overwritten block by block (an 8B model's 128 x 2048 calibration tokens: 2.15 GB, where two
float32 copies were 8.6 GB); measured with turbopack.device.PeakMemory on the CPU."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from turbopack.checkpoint import Checkpoint
from turbopack.device import PeakMemory
from turbopack.packer.calibration import pipeline
from turbopack.packer.calibration.capture import EMBED, BlockRunner, embed, hidden_dtype, load_block
from turbopack.packer.quantize import quantize
from turbopack.packer.synthetic import llama_config, write_synthetic

HIDDEN, INTER, SAMPLES, SEQ = 256, 512, 32, 256


@pytest.fixture(scope="module")
def synthetic_model(calib_model, tmp_path_factory):
    """A bf16 Llama whose calibration hidden states (8192 tokens x 256) outweigh its block."""
    folder = write_synthetic(tmp_path_factory.mktemp("mem") / "llama", llama_config(HIDDEN, INTER, 2, 4, 2, vocab=128))
    shutil.copy(calib_model / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize("model_dtype,stored", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
                                                (torch.float32, torch.float32)])
def test_hidden_dtype_follows_the_model(model_dtype, stored):
    """bf16 for any 16-bit model (fp16's range would let an activation overflow to inf), float32 kept."""
    ckpt = SimpleNamespace(tensors={EMBED: SimpleNamespace(dtype=model_dtype)})
    assert hidden_dtype(ckpt) is stored


def test_hidden_states_are_one_16bit_buffer_updated_in_place(synthetic_model):
    ckpt = Checkpoint.open(synthetic_model)
    assert hidden_dtype(ckpt) is torch.bfloat16
    cfg = pipeline.block_config(ckpt)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    x = embed(ckpt, ids, torch.device("cpu"), torch.bfloat16)
    ref = embed(ckpt, ids, torch.device("cpu"))  # float32, as before
    assert x.dtype is torch.bfloat16 and torch.equal(x.float(), ref)  # bf16 rows: exact
    block = load_block(ckpt, cfg, 0, torch.device("cpu"))
    runner = BlockRunner(cfg, 16, torch.device("cpu"), batch_size=3)
    ptr = x.data_ptr()
    runner.forward(block, x)
    with torch.no_grad():
        want = block(ref, runner.cos, runner.sin)
    assert x.data_ptr() == ptr and x.dtype is torch.bfloat16
    torch.testing.assert_close(x.float(), want, rtol=1e-2, atol=1e-2)  # float32 compute, bf16 storage
    assert torch.equal(x, want.to(torch.bfloat16))


def test_calibration_peak_is_one_bf16_copy_of_the_hidden_states(synthetic_model, calib_text, tmp_path,
                                                                monkeypatch):
    """Peak torch memory of a SmoothQuant run <= the bf16 hidden states + the float32 block (and a
    quantized copy of it) + one forward chunk's float32 scratch. The old float32 input and output
    buffers alone (4 x the bf16 buffer) exceed that."""
    monkeypatch.setattr(pipeline, "FORWARD_TOKENS", SEQ)  # one sequence a chunk: scratch well below x
    tokens = SAMPLES * SEQ
    hidden_bytes = tokens * HIDDEN * 2
    block_params = HIDDEN * (HIDDEN + 2 * HIDDEN // 2 + HIDDEN) + 3 * HIDDEN * INTER
    scratch = SEQ * (4 * INTER + 8 * HIDDEN) * 4
    bound = hidden_bytes + 2 * 4 * block_params + scratch + (1 << 20)
    text = tmp_path / "calib.txt"
    text.write_text(calib_text.read_text() * 2)
    with PeakMemory(torch.device("cpu")) as mem:
        quantize(synthetic_model, tmp_path / "q", "w8a8", smooth=True, calib=text, calib_samples=SAMPLES,
                 calib_seqlen=SEQ, progress=False, device="cpu")
    assert hidden_bytes <= mem.peak <= bound, f"peak {mem.peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    assert 4 * hidden_bytes > bound
