"""The transformers drop-in: load_hf gives a transformers model whose linears are our QuantLinear,
matching the dequantized reference (a dense transformers model carrying the dequantized weights),
generating the same tokens, for arch-neutral and packed (CPU emulator) folders; packed-for-another-
arch folders are refused with the repack command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import TurbopackError
from turbopack.inference.hf_dropin import check_arch_compat, load_hf
from turbopack.inference.qlinear import QuantLinear
from turbopack.packer.quantize import quantize

BUNDLED = Path(__file__).resolve().parents[2] / "turbopack" / "assets" / "tiny-llama"
IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])


def dequantized_reference(folder: Path, base: Path):
    """A plain transformers model with every quantized weight replaced by its dequantization."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    qc = QuantizedCheckpoint(folder)
    with torch.no_grad():
        for name in qc.modules:
            model.get_submodule(name).weight.copy_(qc.module(name).dequantize())
    return model.eval()


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("dropin")
    return {name: quantize(tiny_llama, root / name, name, progress=False, **params).out
            for name, params in [("w4a16", {"group_size": 32}), ("w8a16", {}), ("fp8", {})]}


@pytest.mark.parametrize("fmt", ["w4a16", "w8a16"])
def test_weight_only_matches_dequantized_reference_exactly(folders, tiny_llama, fmt):
    model = load_hf(folders[fmt])
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 14 and all(m.backend == "reference" for m in linears)
    assert not any(
        type(m) is torch.nn.Linear and m.weight.shape[0] != 128 for m in model.modules()
    )  # only lm_head dense
    ref = dequantized_reference(folders[fmt], tiny_llama)
    with torch.no_grad():
        ours, theirs = model(IDS).logits, ref(IDS).logits
    assert torch.equal(ours, theirs)  # same float32 weights, same transformers code: same bits
    gen = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(IDS, **gen), ref.generate(IDS, **gen))


def test_fp8_matches_runtime_reference_and_pipeline(folders):
    """FP8 quantizes activations per token (the format's linear), so the yardstick is turbopack's
    own reference model running the same QuantLinear math, not a dense model."""
    from transformers import pipeline

    from turbopack.inference.loader import load

    model = load_hf(folders["fp8"])
    ref = load(folders["fp8"], device="cpu", dtype=torch.float32).model
    with torch.no_grad():
        a, b = model(IDS).logits, ref(IDS)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    pipe = pipeline("text-generation", model=model, tokenizer=word_tokenizer())
    text = pipe("w1 w5 w9", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("w1 w5 w9") and len(re.findall(r"w\d+", text)) == 7  # prompt + 4 new words


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]", pad_token="[UNK]")


def test_packed_folder_on_cpu_emulator(folders, tmp_path):
    """The emulator rounds the dequantized weight to 16 bits as the GPU kernels do (docs/layouts.md),
    so its yardstick is the runtime's own model on the same packed folder; against the exact
    arch-neutral reference it is close, not equal."""
    pytest.importorskip("turbopack.layouts.emulate")
    from turbopack.inference.loader import load
    from turbopack.packer.pack import pack

    exact = load_hf(folders["w4a16"])
    for arch in ("sm80", "sm90"):
        out = tmp_path / arch
        pack(folders["w4a16"], out, (arch,), progress=False)
        model = load_hf(out)
        assert {m.backend for m in model.modules() if isinstance(m, QuantLinear)} == {"emulator"}
        runtime = load(out, device="cpu", dtype=torch.float32).model
        with torch.no_grad():
            a, b, c = model(IDS).logits, runtime(IDS), exact(IDS).logits
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (arch, (a - b).abs().max())
        assert (a - c).abs().max() < 0.05, arch


def test_check_arch_compat():
    packed = {"quantization_config": {"quant_method": "turbopack", "packed": True, "arch": "sm80",
                                      "layout_version": {"w4_t16x64": 1}}}
    check_arch_compat(packed, "sm80", known_layouts={"w4_t16x64": 1})
    check_arch_compat({"quantization_config": {"quant_method": "turbopack", "packed": False}}, "sm90")
    with pytest.raises(
        TurbopackError, match=r"packed for sm80 but this GPU is sm90; repack it: `turbopack pack .* --arch sm90"
    ):
        check_arch_compat(packed, "sm90", known_layouts={"w4_t16x64": 1})
    with pytest.raises(TurbopackError, match="version 1 is newer"):
        check_arch_compat(packed, "sm80", known_layouts={"w4_t16x64": 0})


def test_refuses_non_turbopack_folder(tiny_llama):
    with pytest.raises(TurbopackError, match="not a turbopack folder"):
        load_hf(tiny_llama)


@pytest.mark.skipif(not BUNDLED.is_dir(), reason="bundled model not built yet")
def test_bundled_model(tmp_path):
    out = quantize(BUNDLED, tmp_path / "w4", "w4a16", group_size=32, progress=False).out
    model = load_hf(out)
    ref = dequantized_reference(out, BUNDLED)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_kernels_match_reference(folders, tmp_path):
    from turbopack.inference.loader import local_arch
    from turbopack.packer.pack import pack

    arch = local_arch(torch.device("cuda"))
    out = tmp_path / arch
    pack(folders["w4a16"], out, (arch,), progress=False)
    model = load_hf(out, device="cuda", dtype=torch.bfloat16)
    assert {m.backend for m in model.modules() if isinstance(m, QuantLinear)} == {"cuda"}
    ref = load_hf(folders["w4a16"], device="cpu", dtype=torch.float32)
    with torch.no_grad():
        a = model(IDS.cuda()).logits.float().cpu()
        b = ref(IDS).logits
    assert (a - b).abs().max().item() < 0.05 * b.abs().max().item()
    other = "sm80" if arch != "sm80" else "sm90"
    pack(folders["w4a16"], tmp_path / other, (other,), progress=False)
    with pytest.raises(TurbopackError, match=f"packed for {other} but this GPU is {arch}"):
        load_hf(tmp_path / other, device="cuda")
