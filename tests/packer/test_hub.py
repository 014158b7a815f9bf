"""Hub ids as model specs, through the real huggingface_hub client and a loopback Hub
(tests/hub_server.py): download of only what we read, revisions, the offline cache, and one-line
errors (exit 2) for what cannot be resolved."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hub_server import Blob, HubServer, hub_env, run
from safetensors.torch import load_file

from turbopack.checkpoint.hub import enable_hub, hub_id_of_cache_path, parse_hub_id

RESOLVE = """
import json, sys
from turbopack.checkpoint.hub import enable_hub
from turbopack.checkpoint import Checkpoint
from turbopack.errors import TurbopackError
enable_hub()
out = {}
for spec in sys.argv[1:]:
    try:
        ck = Checkpoint.open(spec)
        out[spec] = {"folder": str(ck.folder), "files": sorted(p.name for p in ck.folder.iterdir()),
                     "n": len(ck.tensors)}
    except TurbopackError as e:
        out[spec] = {"error": str(e)}
print(json.dumps(out))
"""


def publish(hub: HubServer, repo_id: str, folder: Path, branch: str = "main", extra: dict | None = None) -> None:
    from hub_server import Repo

    repo = hub.state.repos.setdefault(repo_id, Repo(private=False))
    files = {p.name: Blob(p.read_bytes(), p.suffix == ".safetensors") for p in folder.iterdir() if p.is_file()}
    files.update(extra or {})
    if branch != "main" and "main" not in repo.branches:
        hub.state.commit(repo, "main", {})
    hub.state.commit(repo, branch, files)


def resolve(specs: list[str], env: dict) -> dict:
    r = run(["-c", RESOLVE, *specs], env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_parse_hub_id(tmp_path, monkeypatch):
    assert parse_hub_id("meta-llama/Llama-3.1-8B") == ("meta-llama/Llama-3.1-8B", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for local in ("./org/name", "/abs/path", "../x/y", "a/b/c", "name-only"):
        assert parse_hub_id(local) is None, local
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_hub_id("org/name") is None  # an existing local folder is never sent to the Hub
    assert hub_id_of_cache_path("/h/hub/models--org--my.model/snapshots/abc/") == "org/my.model"
    enable_hub()
    enable_hub()
    from turbopack.checkpoint.source import RESOLVERS

    assert len([r for r in RESOLVERS if r.__name__ == "resolve_hub"]) == 1


def test_hub_id_online_then_offline(tiny_llama, tmp_path):
    home = tmp_path / "hf"
    with HubServer() as hub:
        publish(hub, "org/tiny", tiny_llama, extra={"pytorch_model.bin": Blob(b"pickle" * 100, True),
                                                    "README.md": Blob(b"# card\n", False)})
        changed = json.loads((tiny_llama / "config.json").read_text())
        changed["rms_norm_eps"] = 1e-3
        publish(
            hub, "org/tiny", tiny_llama, branch="v1", extra={"config.json": Blob(json.dumps(changed).encode(), False)}
        )
        got = resolve(["org/tiny", "org/tiny@v1", "org/missing", "org/tiny@nope"], hub_env(hub, home))
        served = list(hub.state.log)
        offline = resolve(["org/tiny", "org/tiny@v1", "org/other"], hub_env(hub, home, offline=True))
        assert hub.state.log == served  # offline: not a single request
    main, v1 = got["org/tiny"], got["org/tiny@v1"]
    assert main["n"] == v1["n"] == len(load_file(str(tiny_llama / "model.safetensors")))
    # only what turbopack reads: no pickle, no README
    assert "pytorch_model.bin" not in main["files"] and "README.md" not in main["files"]
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(main["files"])
    assert json.loads((Path(v1["folder"]) / "config.json").read_text())["rms_norm_eps"] == 1e-3
    assert main["folder"] != v1["folder"] and hub_id_of_cache_path(main["folder"]) == "org/tiny"
    sd = load_file(str(Path(main["folder"]) / "model.safetensors"))
    ref = load_file(str(tiny_llama / "model.safetensors"))
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert "has no model repo org/missing" in got["org/missing"]["error"]
    assert "has no revision 'nope'" in got["org/tiny@nope"]["error"]
    assert offline["org/tiny"] == main and offline["org/tiny@v1"] == v1
    err = offline["org/other"]["error"]
    assert "HF_HUB_OFFLINE is set" in err and "org/other" in err and "\n" not in err


def test_cli_convert_from_hub_and_errors(tiny_llama, tmp_path):
    from packer.interop.foreign import write_awq

    from turbopack.checkpoint.quantized import QuantizedCheckpoint

    expect = write_awq(tiny_llama, tmp_path / "awq")
    home = tmp_path / "hf"
    with HubServer() as hub:
        publish(hub, "org/tiny-awq", tmp_path / "awq")
        env = hub_env(hub, home)
        ok = run(["-m", "turbopack.cli.app", "convert", "org/tiny-awq", "-o", str(tmp_path / "out")], env)
        missing = run(["-m", "turbopack.cli.app", "convert", "org/missing", "-o", str(tmp_path / "x")], env)
    down = run(
        ["-m", "turbopack.cli.app", "convert", "org/unreachable", "-o", str(tmp_path / "y")], hub_env(None, home)
    )
    assert ok.returncode == 0, ok.stderr
    qc = QuantizedCheckpoint(tmp_path / "out")
    assert all(torch.equal(qc.module(m).dequantize(), w) for m, w in expect.items())
    for r, text in ((missing, "has no model repo org/missing"), (down, "cannot reach the Hub")):
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and text in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
