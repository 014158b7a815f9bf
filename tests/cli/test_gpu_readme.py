"""On a GPU, the README's commands as a user types them: the CLI in a child process, default flags
(no --device, no --backend), every format: quantize -> pack for this GPU's arch -> run -> eval ->
verify, calibrated quantize, `turbopack check` with no argument, and the Python API's
`turbopack.load` / `turbopack.load_hf` with default arguments. They run in the device's `-m gpu`
suite (CI has no GPU: skipped there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "turbopack" / "assets" / "tiny-llama"
FORMATS = {"w4a16": ["--group-size", "64"], "w8a16": [], "w8a8": [], "fp8": [], "nvfp4": []}


def turbopack(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`turbopack ARGS` as a shell runs it (the installed script when there is one)."""
    exe = shutil.which("turbopack")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "turbopack", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("TURBOPACK_TEST_CPU", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ turbopack {' '.join(args)}  -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def local_arch() -> str:
    from turbopack.inference.loader import local_arch as arch_of

    return arch_of(torch.device("cuda", 0))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_path_for_every_format(fmt, tmp_path):
    arch = local_arch()
    assert turbopack("quantize", str(BUNDLED), "-o", "q", "--format", fmt, *FORMATS[fmt], cwd=tmp_path).returncode == 0
    assert turbopack("pack", "q", "--arch", arch, "-o", "p", cwd=tmp_path).returncode == 0
    run = turbopack("run", "p", "--prompt", "ROMEO:", "--max-new-tokens", "32", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-500:]
    assert "cuda" in run.stderr  # the summary line names the device it ran on
    for folder in ("q", str(BUNDLED)):  # arch-neutral (packed at load) and the float model
        assert turbopack("run", folder, "--prompt", "ROMEO:", "--max-new-tokens", "8", cwd=tmp_path).returncode == 0
    ev = turbopack("eval", "q", "--against", str(BUNDLED), "--max-windows", "8", "--json", cwd=tmp_path)
    assert ev.returncode == 0
    res = json.loads(ev.stdout)
    assert res["device"].startswith("cuda") and res["ppl_change_pct"] < 3.0
    assert turbopack("verify", "p", "--against", "q", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_calibrated_quantize_on_the_gpu(method, tmp_path):
    q = turbopack("quantize", str(BUNDLED), "-o", "q", "-f", "w4a16", "-g", "64", "--method", method, cwd=tmp_path)
    assert q.returncode == 0
    ev = turbopack("eval", "q", "--against", str(BUNDLED), "--max-windows", "8", "--json", cwd=tmp_path)
    assert ev.returncode == 0 and json.loads(ev.stdout)["ppl_change_pct"] < 2.0


def test_check_with_no_argument_has_passing_gpu_rows(tmp_path):
    proc = turbopack("check", cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "GPU rows on" in proc.stdout and "PASS" in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines()[2:])


def test_python_api_defaults(tmp_path):
    import turbopack as tp

    assert turbopack("quantize", str(BUNDLED), "-o", "q", "--format", "w4a16", "--group-size", "64",
                     cwd=tmp_path).returncode == 0
    assert turbopack("pack", "q", "--arch", local_arch(), "-o", "p", cwd=tmp_path).returncode == 0
    m = tp.load(tmp_path / "p")
    assert m.loaded.device.type == "cuda" and m.loaded.backend == "cuda"
    out = m.generate("ROMEO:", max_new_tokens=16)
    assert out.stats.cuda_graph and len(out.token_ids) >= 1
    hf = tp.load_hf(tmp_path / "p")
    assert next(hf.parameters()).device.type == "cuda"
    ids = torch.tensor([m.encode("ROMEO:")], device="cuda")
    with torch.inference_mode():
        logits = hf(ids).logits
    assert torch.isfinite(logits).all()
