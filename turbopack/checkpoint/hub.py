"""Hugging Face Hub ids as model specs: ``org/name`` or ``org/name@revision`` resolves to a local
snapshot through huggingface_hub's snapshot_download.

Only what turbopack reads is fetched (configs, tokenizer files, *.safetensors and their index, our
own turbopack.json), into the user's usual cache with the user's usual token; HF_HUB_OFFLINE=1
serves from that cache without touching the network. A spec that names an existing local path is
never sent to the Hub.

Registration is explicit: :func:`enable_hub` appends :func:`resolve_hub` to
``turbopack.checkpoint.source.RESOLVERS`` (the CLI's main and the API entry points call it), so
importing the checkpoint package never imports huggingface_hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from turbopack.checkpoint import source
from turbopack.errors import CheckpointError

#: org/name[@revision], with the Hub's characters for names and git's for revisions
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")

ALLOW_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "turbopack.json", "quantize_config.json", "quant_config.json", "quality.json",
]


class HubError(CheckpointError):
    """A Hub id that cannot be resolved (not found, offline without a cached copy, no access)."""


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """(repo_id, revision) when ``spec`` looks like a Hub id and is not a local path, else None."""
    if Path(spec).exists() or spec.startswith((".", "/", "~")):
        return None
    m = HUB_ID.match(spec)
    if m is None or ".." in spec:
        return None
    return m.group("repo"), m.group("rev")


def resolve_hub(spec: str) -> Path | None:
    """A RESOLVERS entry: the local snapshot folder of Hub id ``spec`` (None if not a Hub id)."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        return None
    repo_id, revision = parsed
    import huggingface_hub as hf
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf.snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except RevisionNotFoundError:
        raise HubError(
            f"{spec}: the Hub repo {repo_id} has no revision {revision!r}; check the branch, tag or commit"
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{spec}: {repo_id} is gated; accept its terms on the Hub and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{spec}: not a local folder, and the Hub ({constants.ENDPOINT}) has no model repo {repo_id} "
            f"that your token can see; check the id, or log in (`hf auth login` or HF_TOKEN) for a private one"
        ) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"{spec}: HF_HUB_OFFLINE is set and {repo_id}{'@' + revision if revision else ''} is not in the "
                f"cache ({constants.HF_HUB_CACHE}); download it once online or unset HF_HUB_OFFLINE"
            ) from None
        raise HubError(f"{spec}: cannot reach the Hub at {constants.ENDPOINT} and {repo_id} is not in the cache "
                       f"({constants.HF_HUB_CACHE}); check the network (or HF_ENDPOINT) and retry") from None
    except hf.errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HubError(f"{spec}: the Hub answered HTTP {status} for {repo_id}; retry later or check access") from None


def enable_hub() -> None:
    """Let every model argument be a Hub id too (idempotent)."""
    if resolve_hub not in source.RESOLVERS:
        source.RESOLVERS.append(resolve_hub)


def hub_id_of_cache_path(path: str | Path) -> str | None:
    """``org/name`` when ``path`` is a snapshot inside a Hub cache (models--org--name/snapshots/...)."""
    m = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", str(path))
    return f"{m.group(1)}/{m.group(2)}" if m else None
