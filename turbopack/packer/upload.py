"""`turbopack upload PACKED --repo-id org/name`: a turbopack folder to the Hugging Face Hub, with a
generated model card.

The repo is created if needed (HfApi.create_repo) and the folder goes up as ONE commit through
HfApi.create_commit, the call upload_folder makes: huggingface_hub decides per file between a
regular blob and LFS/Xet and does the large-file transfer. The card (README.md, turbopack/modelcard.py)
joins that commit as an in-memory file, so the local folder is never modified. An existing card
wins, in the folder or already on the Hub, unless ``overwrite_card``. ``dry_run`` lists exactly
what would be uploaded (files, sizes, card) and makes no network call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbopack.errors import TurbopackError
from turbopack.packer.modelcard import build_card

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CARD = "README.md"


class UploadError(TurbopackError):
    """The Hub refused the upload (auth, network, offline mode)."""


@dataclass
class UploadPlan:
    folder: Path
    repo_id: str
    revision: str | None
    files: list[tuple[str, int]]  # (path in repo, bytes), the card excluded
    card: str | None  # text to upload as README.md, None when an existing card is kept
    card_action: str  # "generated" | "kept (folder)" | "kept (hub)" | "overwritten"
    commit: str | None = None
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files) + len(self.card.encode() if self.card else b"")

    def as_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision or "main", "folder": str(self.folder),
                "files": [{"path": p, "bytes": s} for p, s in self.files], "card": self.card_action,
                "card_text": self.card, "total_bytes": self.total_bytes, "commit": self.commit, "url": self.url,
                "notes": self.notes}


def _files(folder: Path) -> list[tuple[str, int]]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            out.append((rel.as_posix(), p.stat().st_size))
    return out


def plan_upload(folder: str | Path, repo_id: str, *, revision: str | None = None, overwrite_card: bool = False,
                base_model: str | None = None) -> UploadPlan:
    folder = Path(folder)
    if not REPO_ID.match(repo_id):
        raise UploadError(f"--repo-id {repo_id!r}: expected org/name (letters, digits, '-', '_', '.')")
    if not folder.is_dir():
        raise UploadError(f"{folder}: no such folder; pass the folder `turbopack quantize/pack/export` wrote")
    if not (folder / "config.json").is_file():
        raise UploadError(f"{folder}: no config.json; this is not a model folder")
    files = _files(folder)
    has_card = any(p == CARD for p, _ in files)
    if has_card and not overwrite_card:
        return UploadPlan(folder, repo_id, revision, files, None, "kept (folder)")
    files = [(p, s) for p, s in files if p != CARD]
    card = build_card(folder, repo_id, base_model)
    return UploadPlan(folder, repo_id, revision, files, card, "overwritten" if has_card else "generated")


def upload(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
           dry_run: bool = False, overwrite_card: bool = False, base_model: str | None = None) -> UploadPlan:
    """Upload FOLDER to the Hub repo REPO_ID (created if needed) in one commit; see the module doc."""
    plan = plan_upload(folder, repo_id, revision=revision, overwrite_card=overwrite_card, base_model=base_model)
    if dry_run:
        if plan.card is not None and not overwrite_card:
            plan.notes.append("a README.md already on the Hub would be kept (not checked in a dry run)")
        return plan
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UploadError("HF_HUB_OFFLINE is set; uploading needs the network (unset it, or use --dry-run)")
    try:
        _push(plan, private, overwrite_card)
    except TurbopackError:
        raise
    except Exception as e:  # huggingface_hub's errors, turned into one line
        raise _one_line(e, repo_id) from None
    return plan


def _push(plan: UploadPlan, private: bool, overwrite_card: bool) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    url = api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
    plan.url = str(url)
    if plan.revision and plan.revision != "main":
        api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
    if plan.card is not None and api.file_exists(plan.repo_id, CARD, revision=plan.revision):
        if overwrite_card:
            plan.card_action = "overwritten"
        else:
            plan.card, plan.card_action = None, "kept (hub)"
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(plan.folder / p)) for p, _ in plan.files]
    if plan.card is not None:
        ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=plan.card.encode()))
    info = api.create_commit(plan.repo_id, ops, commit_message=f"Upload {plan.folder.name} with turbopack",
                             revision=plan.revision)
    plan.commit = info.oid


def _one_line(e: Exception, repo_id: str) -> UploadError:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            return UploadError(f"{repo_id}: the Hub refused the write (HTTP {status}); log in with a write token "
                               f"(`hf auth login` or HF_TOKEN) that can write to {repo_id.split('/')[0]}")
        return UploadError(
            f"{repo_id}: the Hub answered HTTP {status} ({str(e).splitlines()[0]}); retry or check the repo"
        )
    name = type(e).__name__
    if "Connect" in name or "Timeout" in name or isinstance(e, OSError):
        return UploadError(
            f"{repo_id}: cannot reach the Hub at {constants.ENDPOINT} ({name}); check the network or HF_ENDPOINT"
        )
    return UploadError(f"{repo_id}: upload failed: {name}: {str(e).splitlines()[0] if str(e) else ''}")
