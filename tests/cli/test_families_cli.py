"""Every command on a tiny Qwen3, Gemma 2, Gemma 3 (text, and the multimodal checkpoint read as its
text model), Phi-3 and the MoE families: quantize, pack (per arch, --tp 2),
verify, inspect, eval, export to compressed-tensors (and back), and run, the float model's run
giving transformers' own greedy tokens past Gemma's sliding window (the KV-cache path)."""

from __future__ import annotations

import json

import pytest
import torch
from tinymodels import make_tiny_model, write_word_tokenizer

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.cli.app import main

transformers = pytest.importorskip("transformers")

NEW = ("qwen3", "gemma2", "gemma3", "gemma3_mm", "phi3", "mixtral", "qwen2_moe", "qwen3_moe")
PROMPT = "w1 w5 w9 w2 w7 w3"  # 6 tokens + 8 new = 14 > the Gemma window of 8


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", NEW)
def test_every_command(name, tmp_path, capsys):
    hf = make_tiny_model(tmp_path / name, arch=name, intermediate_size=128, num_hidden_layers=3)
    write_word_tokenizer(hf)
    (tmp_path / "text.txt").write_text(" ".join(f"w{(7 * i) % 120}" for i in range(400)))
    q, tp2, p, ct = (str(tmp_path / n) for n in ("q", "tp2", "p", "ct"))
    assert main(["quantize", str(hf), "-o", q, "-f", "w4a16", "-g", "32"]) == 0
    if name == "gemma3_mm":  # the output is the text model, and says what it left out
        assert "(the vision tower and projector) are left out" in capsys.readouterr().out
        assert json.loads((tmp_path / "q" / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    assert main(["pack", q, "--arch", "sm90", "--tp", "2", "-o", tp2]) == 0
    assert main(["verify", tp2, "--against", q]) == 0
    assert main(["pack", q, "--arch", "sm80", "-o", p]) == 0
    capsys.readouterr()
    assert main(["inspect", p, "--json"]) == 0
    assert _json(capsys)["kind"] == "packed"
    assert main(["eval", q, "--against", str(hf), "--text", str(tmp_path / "text.txt"), "--seq-len", "32",
                 "--max-windows", "2", "--json"]) == 0
    assert _json(capsys)["top1_agreement"] > 0.3
    assert main(["export", q, "--to", "compressed-tensors", "-o", ct]) == 0
    assert main(["convert", ct, "-o", str(tmp_path / "back")]) == 0
    a, b = QuantizedCheckpoint(q), QuantizedCheckpoint(tmp_path / "back")
    assert set(a.modules) == set(b.modules)
    for m in a.modules:
        assert torch.equal(a.module(m).dequantize(), b.module(m).dequantize()), m
    capsys.readouterr()
    assert main(["run", p, "--prompt", PROMPT, "-n", "8", "--device", "cpu", "--json"]) == 0  # the emulator
    assert _json(capsys)["model"]["backend"] == "emulator"
    assert main(["run", str(hf), "--prompt", PROMPT, "-n", "8", "--device", "cpu", "--json"]) == 0
    out = _json(capsys)
    assert_greedy(hf, out["prompt_ids"], out["token_ids"])


def assert_greedy(folder, prompt: list[int], new: list[int]) -> None:
    """``new`` is transformers' greedy continuation of ``prompt``, teacher-forced in fp32: each token
    is the argmax, or within bf16 rounding of it (`run` decodes in bf16, and random tiny models
    have near-ties that bf16 may break either way)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
    slack = 1e-2 * logits.abs().max()
    for step, tok in enumerate(new):
        assert logits[step].max() - logits[step, tok] <= slack, f"step {step}: {tok} is not the greedy token"
