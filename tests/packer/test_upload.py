"""`turbopack upload` through the real huggingface_hub client against the loopback Hub
(tests/hub_server.py): repo creation, one commit with small files as regular blobs and the
weights through LFS, the generated model card, card keeping/overwriting, branches, auth errors,
and a dry run that touches nothing. The upload is then downloaded back as a Hub id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from hub_server import HubServer, hub_env, run

from turbopack.packer.modelcard import build_card
from turbopack.packer.upload import plan_upload

CLI = ["-m", "turbopack.cli.app", "upload"]

MORE = """
import json, os, sys
from pathlib import Path
from turbopack.packer.upload import upload
from turbopack.errors import TurbopackError
folder = Path(sys.argv[1])
out = {}
(folder / "quality.json").write_text(json.dumps({"perplexity": {"wikitext2": 7.25, "bf16": 7.0}, "pass": True}))
out["kept"] = upload(folder, "org/tiny-w4").card_action
out["over"] = upload(folder, "org/tiny-w4", overwrite_card=True).card_action
out["branch"] = upload(folder, "org/tiny-w4", revision="dev").commit
os.environ["HF_TOKEN"] = "hf_wrong"
try:
    upload(folder, "org/other")
except TurbopackError as e:
    out["denied"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory):
    from turbopack.packer.quantize import quantize

    return quantize(tiny_llama, tmp_path_factory.mktemp("up") / "tiny-w4", "w4a16", group_size=32, progress=False).out


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_card_content(quantized):
    card = build_card(quantized, "org/tiny-w4", base_model="org/tiny")
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "org/tiny" and meta["library_name"] == "turbopack"
    assert {"turbopack", "w4a16", "4-bit"} <= set(meta["tags"])
    assert meta["turbopack"] == {"format": "w4a16", "group_size": 32, "sym": False, "scale_dtype": "bfloat16",
                                 "method": "rtn", "layout": "arch-neutral"}
    assert "turbopack pack org/tiny-w4 --arch auto" in card and "turbopack.load_hf(\"org/tiny-w4\")" in card
    assert "No quality numbers" in card


def test_dry_run_touches_nothing(quantized):
    before = tree(quantized)
    with HubServer() as hub:
        r = run([*CLI, str(quantized), "--repo-id", "org/tiny-w4", "--dry-run"], hub_env(hub, quantized.parent / "hf"))
        assert hub.state.log == [] and hub.state.repos == {}
    assert r.returncode == 0, r.stderr
    assert tree(quantized) == before
    plan = plan_upload(quantized, "org/tiny-w4")
    for path, size in plan.files:
        assert f"{size:,d}  {path}" in r.stdout
    assert "README.md (generated)" in r.stdout and plan.card in r.stdout


def test_upload_roundtrip(quantized, tmp_path):
    work = tmp_path / "tiny-w4"
    work.mkdir()
    for p in quantized.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    home = tmp_path / "hf"
    with HubServer(lfs_threshold=64 << 10) as hub:
        env = hub_env(hub, home)
        r = run([*CLI, str(work), "--repo-id", "org/tiny-w4", "--private", "--base-model", "org/tiny"], env)
        assert r.returncode == 0, r.stderr
        local = tree(work)
        files = hub.files("org/tiny-w4")
        repo = hub.state.repos["org/tiny-w4"]
        assert repo.private and len(repo.commits) == 2  # creation + ONE upload commit
        for path, digest in local.items():
            assert hashlib.sha256(files[path].data).hexdigest() == digest, path
        assert files["model.safetensors"].lfs and files["model.safetensors"].sha256 in hub.state.lfs
        assert not files["config.json"].lfs
        assert "POST /org/tiny-w4.git/info/lfs/objects/batch" in hub.state.log
        card = files["README.md"].data.decode()
        assert yaml.safe_load(card.split("---")[1])["base_model"] == "org/tiny"
        assert "README.md" not in local  # the card went up from memory; the folder is untouched

        more = run(["-c", MORE, str(work)], env)
        assert more.returncode == 0, more.stderr
        out = json.loads(more.stdout.strip().splitlines()[-1])
        assert out["kept"] == "kept (hub)" and out["over"] == "overwritten"
        card2 = hub.files("org/tiny-w4")["README.md"].data.decode()
        assert "| perplexity.wikitext2 | 7.25 |" in card2 and card2 != card
        assert hub.files("org/tiny-w4", "dev")["quality.json"].data == (work / "quality.json").read_bytes()
        assert "refused the write (HTTP 401)" in out["denied"] and "\n" not in out["denied"]

        # and back down, as a Hub id (private: the token is needed)
        got = run(["-c", "from turbopack.checkpoint.hub import enable_hub; enable_hub();"
                         "from turbopack.checkpoint.quantized import QuantizedCheckpoint as Q;"
                         "q = Q('org/tiny-w4'); print(len(q.modules), q.folder)"], env)
        assert got.returncode == 0, got.stderr
        n, folder = got.stdout.split()
        assert int(n) == 14 and tree(Path(folder))["model.safetensors"] == local["model.safetensors"]


def test_local_card_kept_and_bad_input(quantized, tmp_path):
    from turbopack.errors import TurbopackError

    work = tmp_path / "f"
    work.mkdir()
    (work / "config.json").write_text("{}")
    (work / "README.md").write_text("mine\n")
    (work / ".hidden").write_text("x")
    plan = plan_upload(work, "org/x")
    assert plan.card is None and plan.card_action == "kept (folder)"
    assert [p for p, _ in plan.files] == ["README.md", "config.json"]
    assert plan_upload(work, "org/x", overwrite_card=True).card_action == "overwritten"
    with pytest.raises(TurbopackError, match="expected org/name"):
        plan_upload(work, "not a repo")
    with pytest.raises(TurbopackError, match="no config.json"):
        plan_upload(tmp_path, "org/x")
