"""The runtime end to end on a tiny random Llama: loading (HF, arch-neutral, packed), the three
linear backends against the dequantized reference model, generation, sampling, and `turbopack run`.
GPU-only paths (CUDA graphs, the cuda backend) are the tests marked gpu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from turbopack.checkpoint.quantized import QuantizedCheckpoint  # noqa: E402
from turbopack.errors import CheckpointError  # noqa: E402
from turbopack.inference import loader as L  # noqa: E402
from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.api import TextStream, load  # noqa: E402
from turbopack.inference.loader import load_model  # noqa: E402
from turbopack.inference.qlinear import QuantLinear, concat  # noqa: E402
from turbopack.inference.sampling import SamplingParams, sample, top_p_filter  # noqa: E402

FORMATS = ("w4a16", "w8a16", "w8a8", "fp8")
# logits vs the model whose weights are the dequantized ones: weights-only formats compute the same
# function (fp32 activations); w8a8/fp8 also quantize activations per token.
REF_TOL = {"w4a16": 1e-5, "w8a16": 1e-5, "w8a8": 0.05, "fp8": 0.1}
# the emulator runs the packed layout's numeric contract (docs/layouts.md), e.g. int4 zeros folded
# into a 16-bit scaled zero, so it is compared with a tolerance
EMU_TOL = {"w4a16": 0.05, "w8a16": 1e-4, "w8a8": 1e-6, "fp8": 1e-4}
ASSET = Path(M.__file__).resolve().parents[1] / "assets" / "tiny-llama"
HAS_CUDA = torch.cuda.is_available()
TINY = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"hf": folder, fmt: arch-neutral folder}: one tiny random Llama, quantized in every format.
    lm_head is scaled up so greedy choices are not near-ties (a random model's logits are flat)."""
    from turbopack.packer.quantize import quantize

    root = tmp_path_factory.mktemp("runtime")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(
                1 + 0.1 * noise if name.endswith("norm.weight") else (0.6 if name == "lm_head.weight" else 0.1) * noise
            )
    hf.save_pretrained(root / "hf", safe_serialization=True)
    out = {"hf": root / "hf"}
    for fmt in FORMATS:
        quantize(root / "hf", root / fmt, fmt, progress=False)
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))


def dequantized_model(folders, fmt: str) -> M.Transformer:
    """The fp32 reference model with every quantized weight replaced by its dequantized value."""
    model = load_model(folders["hf"], dtype=torch.float32)
    q = QuantizedCheckpoint(folders[fmt])
    with torch.no_grad():
        for name in q.modules:
            model.get_submodule(name).weight.copy_(q.module(name).dequantize())
    return model


def test_hf_folder_loads_like_load_model(folders, ids):
    ours = load(folders["hf"], device="cpu", dtype=torch.float32)
    assert ours.loaded.kind == "hf" and ours.loaded.backend == "none"
    assert torch.equal(ours.model(ids), load_model(folders["hf"], dtype=torch.float32)(ids))


@pytest.mark.parametrize("fmt", FORMATS)
def test_reference_backend_matches_dequantized_model(folders, ids, fmt):
    m = load(folders[fmt], device="cpu", dtype=torch.float32)
    assert m.loaded.backend == "reference" and m.loaded.kind == "quantized"
    qls = [mod for mod in m.model.modules() if isinstance(mod, QuantLinear)]
    assert len(qls) == 7 * TINY["num_hidden_layers"]
    assert not any(isinstance(getattr(q, "weight", None), torch.Tensor) for q in qls)  # no dense copy held
    assert rel_err(m.model(ids), dequantized_model(folders, fmt)(ids)) < REF_TOL[fmt]


@pytest.mark.parametrize("arch", ["sm80", "sm90"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_emulator_backend_matches_reference(folders, ids, fmt, arch):
    from turbopack.layouts import get_layout

    ref = load(folders[fmt], device="cpu", dtype=torch.float32)
    emu = load(folders[fmt], device="cpu", dtype=torch.float32, arch=arch)
    assert emu.loaded.backend == "emulator" and emu.loaded.arch == arch
    layouts = {get_layout(n) for n in emu.loaded.info["layouts"]}
    if any(lay.weights_only for lay in layouts):  # fp8 upcast on sm80: 16-bit activations
        assert rel_err(emu.model(ids), dequantized_model(folders, fmt)(ids)) < 1e-4
    else:
        assert rel_err(emu.model(ids), ref.model(ids)) < EMU_TOL[fmt]


@pytest.mark.parametrize("fmt,arch", [("w8a16", "sm90"), ("w8a16", "sm80"), ("w8a8", "sm90"), ("fp8", "sm90")])
def test_greedy_generation_identical_reference_vs_emulator(folders, ids, fmt, arch):
    ref = load(folders[fmt], device="cpu", dtype=torch.float32)
    emu = load(folders[fmt], device="cpu", dtype=torch.float32, arch=arch)
    a, sa = ref.generate_ids(ids, 16, stop=False)
    b, _ = emu.generate_ids(ids, 16, stop=False)
    assert a.shape == (2, 16) and sa.new_tokens == 16
    assert torch.equal(a, b)
    assert len(set(a[0].tolist())) > 1  # not a degenerate repeat of one token


def test_packed_folder_runs_on_the_emulator(folders, ids, tmp_path):
    from turbopack.packer.pack import pack

    pack(folders["w4a16"], tmp_path / "sm90", arch=("sm90",), progress=False)
    packed = load(tmp_path / "sm90", device="cpu", dtype=torch.float32)
    at_load = load(folders["w4a16"], device="cpu", dtype=torch.float32, arch="sm90")
    assert packed.loaded.kind == "packed" and packed.loaded.arch == "sm90"
    assert torch.equal(packed.model(ids), at_load.model(ids))  # the packed file is only a cache


def test_packed_for_another_gpu_is_refused_with_the_repack_command(folders, tmp_path, monkeypatch):
    from turbopack.packer.pack import pack

    pack(folders["w8a16"], tmp_path / "sm80", arch=("sm80",), progress=False)
    manifest = json.loads((tmp_path / "sm80" / "turbopack.json").read_text())
    monkeypatch.setattr(L, "local_arch", lambda device: "sm90")
    cuda = torch.device("cuda", 0)
    with pytest.raises(CheckpointError) as e:
        L.plan_modules(tmp_path / "sm80", manifest, cuda, repack=False, arch=None, backend=None)
    msg = str(e.value)
    assert "\n" not in msg and "sm80" in msg and f"turbopack pack {folders['w8a16']} --arch sm90 -o" in msg
    read_from, kind, plans, arch = L.plan_modules(
        tmp_path / "sm80", manifest, cuda, repack=True, arch=None, backend=None
    )
    assert read_from == folders["w8a16"] and kind == "quantized" and arch == "sm90"
    assert {p.pack_for for p in plans.values()} == {"sm90"} and {p.backend for p in plans.values()} == {"cuda"}


def test_kv_quantized_generation_tracks_bf16_cache(folders, ids):
    base = load(folders["w8a16"], device="cpu", dtype=torch.float32)
    full = base.model(ids)
    for kv, tol in (("bf16", 1e-5), ("int8", 0.02), ("int4", 0.2)):
        m = load(folders["w8a16"], device="cpu", dtype=torch.float32, kv=kv)
        m.engine.reserve(2, 32)
        # prefill the first 5 tokens, then decode the rest one at a time, as generate does
        logits = [m.engine.prefill(ids[:, :5])]
        for i in range(5, ids.shape[1]):
            logits.append(m.engine.decode(ids[:, i], i))
        got = torch.stack(logits, 1)
        assert rel_err(got, full[:, 4:]) < tol, kv


def test_fused_projections_compute_the_same(folders, ids):
    for fmt in ("hf", "w4a16", "fp8"):
        a = load(folders[fmt], device="cpu", dtype=torch.float32, fuse=False)
        b = load(folders[fmt], device="cpu", dtype=torch.float32, fuse=True)
        attn = b.model.model.layers[0].self_attn
        assert attn.qkv_proj is not None and not hasattr(attn, "q_proj")
        assert rel_err(b.model(ids), a.model(ids)) < 1e-5


def test_concat_refuses_mismatched_modules():
    from turbopack.formats import get_format

    fmt = get_format("fp8", per_tensor=True)
    mods = []
    for scale in (1.0, 2.0):
        q = fmt.quantize(torch.randn(8, 32) * scale)
        mods.append(QuantLinear.from_tensors(fmt, (8, 32), q))
    assert concat(mods) is None  # two different per-tensor scales cannot share one tensor
    assert concat([mods[0], mods[0]]).shape == (16, 32)


def test_sampling_greedy_seeded_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    assert sample(logits, SamplingParams()).tolist() == [1]
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    draws = [sample(logits.expand(64, 4), p, p.generator(torch.device("cpu"))).tolist() for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1  # seeded: reproducible, still random
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs, 0.7)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, 0.01), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)


def test_text_stream_holds_back_partial_characters():
    class ByteTok:  # decodes ids as UTF-8 bytes, like a byte-level BPE does
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    ts = TextStream(ByteTok())
    pieces = [ts.push(b) for b in "hé!".encode()]
    assert pieces == ["h", "", "é", "!"]


@pytest.mark.skipif(not ASSET.is_dir(), reason="turbopack/assets/tiny-llama not present yet")
def test_run_cli_on_bundled_model(tmp_path, capsys):
    from turbopack.cli.app import main
    from turbopack.packer.quantize import quantize

    quantize(ASSET, tmp_path / "w8", "w8a16", progress=False)
    rc = main(["run", str(tmp_path / "w8"), "--prompt", "ROMEO:", "-n", "12", "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and 1 <= len(out["token_ids"]) <= 12 and out["stats"]["decode_tok_s"] > 0
    rc = main(["run", str(ASSET), "--prompt", "ROMEO:", "-n", "8", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() and "decode:" in captured.err and "tok/s" in captured.err


@pytest.mark.skipif(not ASSET.is_dir(), reason="turbopack/assets/tiny-llama not present yet")
def test_run_imports_only_what_it_runs(tmp_path):
    """`turbopack run` of a W4A16 sm90 pack on the CPU (the emulator) imports none of the heavy
    packages it does not run: building the model on the meta device once imported torch._dynamo
    (and sympy) through a random init, ~5 s of every run; triton is for the GPU (and interpreter)
    only; transformers, huggingface_hub, rich and the evaluation code are other commands' business."""
    import os
    import subprocess
    import sys

    from turbopack.packer.pack import pack
    from turbopack.packer.quantize import quantize

    quantize(ASSET, tmp_path / "w4", "w4a16", group_size=64, progress=False)
    pack(tmp_path / "w4", tmp_path / "w4-sm90", "sm90")
    heavy = ("torch._dynamo", "sympy", "triton", "transformers", "huggingface_hub", "rich", "turbopack.evaluation")
    code = ("import sys; from turbopack.cli.app import main; rc = main(sys.argv[1:]); "
            f"print('IMPORTED', [m for m in {heavy!r} if m in sys.modules]); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = ["run", str(tmp_path / "w4-sm90"), "--prompt", "ROMEO:", "-n", "2", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kv", ["bf16", "int8", "int4"])
def test_cuda_graph_decode_matches_eager(folders, ids, kv):
    eager = load(folders["hf"], device="cuda", kv=kv, use_graphs=False)
    graph = load(folders["hf"], device="cuda", kv=kv, use_graphs=True)
    a, _ = eager.generate_ids(ids, 24, stop=False)
    b, st = graph.generate_ids(ids, 24, stop=False)
    assert st.cuda_graph and torch.equal(a, b)
    b2, _ = graph.generate_ids(ids, 24, stop=False)  # the captured graph is reused
    assert torch.equal(b, b2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_backend_matches_reference_on_gpu(folders, ids, fmt):
    pytest.importorskip("turbopack.inference.kernels.dispatch")
    gpu = load(folders[fmt], device="cuda")
    ref = load(folders[fmt], device="cpu")  # the format's own math, bf16, on the CPU
    assert gpu.loaded.backend == "cuda" and gpu.loaded.arch is not None
    # fp8/w8a8 quantize activations per token: the GPU's and the CPU's bf16 roundings of x differ
    tol = {"w4a16": 0.05, "w8a16": 0.03, "w8a8": 0.05, "fp8": 0.08}[fmt]
    assert rel_err(gpu.model(ids.cuda()).cpu(), ref.model(ids)) < tol
    a, _ = gpu.generate_ids(ids, 8, stop=False)  # fast path + CUDA graph on the packed kernels
    b, _ = load(folders[fmt], device="cuda", use_graphs=False).generate_ids(ids, 8, stop=False)
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("fmt", ["hf", "w4a16", "w8a16", "w8a8"])
def test_pdl_on_and_off_decode_the_same(folders, ids, fmt, monkeypatch):
    """Programmatic dependent launch (kernels/pdl.py) only lets a kernel start early, never read
    early: the captured decode with it on (the default, the Triton linears included) and with the
    linears out of it ("glue") gives the tokens of the one with it off. On sm_90+ it must really be
    on (the glue's Triton intrinsics included), or the comparison proves nothing."""
    from turbopack.inference.kernels import cuda_build, pdl

    tokens = {}
    try:
        for flag in ("0", "1", "glue"):
            monkeypatch.setenv(pdl.ENV, flag)
            cuda_build.refresh_pdl()
            tokens[flag], st = load(folders[fmt], device="cuda").generate_ids(ids, 24, stop=False)
            assert st.cuda_graph
    finally:
        monkeypatch.delenv(pdl.ENV)
        cuda_build.refresh_pdl()
    if torch.cuda.get_device_capability() >= (9, 0):
        assert pdl.enabled(torch.device("cuda")) and pdl.triton_ok()
    assert torch.equal(tokens["0"], tokens["1"]) and torch.equal(tokens["0"], tokens["glue"])
