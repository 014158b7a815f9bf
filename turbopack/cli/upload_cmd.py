"""`turbopack upload`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from turbopack.cli.options import JsonOpt


def upload(
    folder: Path = typer.Argument(..., help="Folder to upload: quantized, packed or exported by turbopack."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo org/name; created if it does not exist."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    revision: Optional[str] = typer.Option(
        None, "--revision", help="Branch to commit to (created from main if missing)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the files, sizes and model card; upload nothing."),
    overwrite_card: bool = typer.Option(
        False, "--overwrite-card", help="Replace an existing README.md (local or on the Hub)."
    ),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="Hub id of the original model, for the card's base_model."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Upload a turbopack folder to the Hugging Face Hub with a generated model card, in one commit.

    Uses your usual Hub login (`hf auth login` or HF_TOKEN) and HF_ENDPOINT.

    [bold]Examples[/bold]

      turbopack upload llama-w4-sm90 --repo-id me/Llama-3-8B-w4-sm90 --dry-run

      turbopack upload llama-w4-ct --repo-id me/Llama-3-8B-w4-ct --private --base-model meta-llama/Meta-Llama-3-8B
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.packer.upload import upload as run

    plan = run(folder, repo_id, private=private, revision=revision, dry_run=dry_run, overwrite_card=overwrite_card,
               base_model=base_model)
    if as_json:
        typer.echo(json.dumps(plan.as_dict(), indent=2))
        return
    head = "would upload" if dry_run else "uploaded"
    typer.echo(f"{head} {len(plan.files) + (plan.card is not None)} files ({plan.total_bytes / 1e6:.2f} MB) "
               f"to {repo_id}@{revision or 'main'}" + (f", commit {plan.commit}" if plan.commit else ""))
    for path, size in plan.files:
        typer.echo(f"  {size:>14,d}  {path}")
    if plan.card is not None:
        typer.echo(f"  {len(plan.card.encode()):>14,d}  README.md ({plan.card_action})")
    else:
        typer.echo(f"  {'':>14}  README.md {plan.card_action}")
    for note in plan.notes:
        typer.echo(f"note: {note}")
    if dry_run and plan.card is not None:
        typer.echo("\n--- README.md ---\n" + plan.card, nl=False)


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)
