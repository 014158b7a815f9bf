"""`turbopack run`."""

from __future__ import annotations

import json
import sys

import typer


def run(
    path: str = typer.Argument(..., help="Packed, arch-neutral quantized, or Hugging Face model folder."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Tokens to generate."),
    kv: str = typer.Option("bf16", "--kv", help="KV cache precision: bf16 | int8 | int4."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(
        1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cuda:N | cpu."),
    repack: bool = typer.Option(
        False,
        "--repack",
        help="A folder packed for another GPU arch: pack its arch-neutral source for this GPU at load.",
    ),
    backend: str = typer.Option(None, "--backend", help="Override the linears' backend: reference | emulator | cuda."),
    arch: str = typer.Option(
        None, "--arch", help="CPU only: run an arch-neutral folder packed for ARCH on the emulator."
    ),
    no_graph: bool = typer.Option(False, "--no-cuda-graph", help="Decode eagerly (no CUDA graph)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print {text, token_ids, prompt_ids, stats} as JSON instead of streaming."
    ),
) -> None:
    """Generate text from a model: the continuation on stdout (streamed), then prefill and decode
    tokens/s on stderr.

    [bold]Examples[/bold]

      turbopack run llama-w4-sm90 --prompt "The capital of France is" --max-new-tokens 32

      turbopack run llama-w4 --prompt "Once upon a time" --kv int8 --temperature 0.8 --top-p 0.95 --json
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.inference.api import load

    m = load(path, device=device, kv=kv, repack=repack, arch=arch, backend=backend,
             use_graphs=False if no_graph else None)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    out = m.generate(prompt, max_new_tokens, temperature, top_p, stream=None if as_json else stream, seed=seed)
    st = out.stats
    if as_json:
        lo = m.loaded
        typer.echo(
            json.dumps(
                {
                    "text": out.text,
                    "token_ids": out.token_ids,
                    "prompt_ids": m.encode(prompt),
                    "stats": st.as_dict(),
                    "model": {
                        "folder": str(lo.folder),
                        "kind": lo.kind,
                        "format": lo.format,
                        "backend": lo.backend,
                        "arch": lo.arch,
                        "device": str(lo.device),
                    },
                },
                indent=2,
            )
        )
        return
    sys.stdout.write("\n")
    typer.echo(
        f"prefill: {st.prompt_tokens} tokens in {st.prefill_s * 1e3:.1f} ms ({st.prefill_tok_s:.1f} tok/s); "
        f"decode: {max(st.new_tokens - 1, 0)} tokens in {st.decode_s * 1e3:.1f} ms ({st.decode_tok_s:.1f} tok/s); "
        f"kv {st.kv}, {m.loaded.backend} on {m.loaded.device}{', CUDA graph' if st.cuda_graph else ''}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
