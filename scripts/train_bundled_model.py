#!/usr/bin/env python3
"""Train the small Llama model bundled in ``turbopack/assets/tiny-llama``.

The model is a genuinely trained (not random) ``LlamaForCausalLM`` whose
dimensions are chosen to stress weight packing:

* ``intermediate_size=576`` -> ``down_proj`` has K=576, not a multiple of 128;
* grouped-query attention (6 query heads, 3 KV heads, head_dim 64) ->
  ``k_proj``/``v_proj`` have N=192;
* tied input/output embeddings, no attention bias.

Everything runs on CPU and is deterministic for a given seed and thread count.
The defaults reproduce the shipped model::

    python scripts/train_bundled_model.py

Steps:

1. train a byte-level BPE tokenizer (vocab 2048) on ``assets/text/train.txt``;
2. train the model in fp32 (AdamW, linear warmup + cosine decay) on random
   256-token windows of the tokenized training text; the text is small
   (~245k tokens, ~20 epochs at the default 1200 steps), so training uses
   strong regularization (weight decay 2.0, residual dropout 0.2, attention
   dropout 0.1), chosen by a held-out-perplexity sweep;
3. save the weights in bfloat16 (single ``model.safetensors``) plus config,
   generation config and tokenizer files;
4. save the pre-tokenized ids of ``train.txt``/``heldout.txt`` as
   ``heldout_ids.safetensors`` (one 1-D int16 tensor named ``input_ids``), so
   evaluation needs no tokenizer;
5. reload the saved bf16 weights and print the held-out perplexity (fp32
   compute, non-overlapping 256-token windows).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXT_DIR = REPO_ROOT / "turbopack" / "assets" / "text"
DEFAULT_OUT_DIR = REPO_ROOT / "turbopack" / "assets" / "tiny-llama"

BOS = "<|bos|>"
EOS = "<|eos|>"

# Model dimensions: fixed on purpose (see module docstring); not CLI options.
MODEL_DIMS = dict(
    vocab_size=2048,
    hidden_size=384,
    intermediate_size=576,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
    initializer_range=0.02,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-dir", type=Path, default=DEFAULT_TEXT_DIR)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=2.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250,
                   help="quick held-out eval every N steps (0: only at the end)")
    p.add_argument("--eval-windows", type=int, default=32,
                   help="held-out windows used by the periodic eval (0: all)")
    p.add_argument("--attention-dropout", type=float, default=0.1,
                   help="dropout on attention probabilities (LlamaConfig.attention_dropout)")
    p.add_argument("--dropout", type=float, default=0.2,
                   help="training-only dropout on the embedding output and on each "
                        "attention/MLP block output (residual dropout; not saved in the config)")
    p.add_argument("--device", default="cpu",
                   help="torch device for training (the shipped model was trained on cpu)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop training early after this many minutes (0: no limit; "
                        "makes the result depend on machine speed)")
    return p.parse_args(argv)


def train_tokenizer(train_txt: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(train_txt)], trainer)
    return tok


def wrap_tokenizer(tok, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def add_residual_dropout(model, p: float):
    """Dropout (active only in train mode) on embeddings and attention/MLP outputs.

    Implemented with forward hooks so the saved model is a plain
    ``LlamaForCausalLM``; returns the hook handles.
    """
    import torch.nn.functional as F

    def hook(module, inputs, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    mods = [model.model.embed_tokens]
    for layer in model.model.layers:
        mods += [layer.self_attn, layer.mlp]
    return [m.register_forward_hook(hook) for m in mods]


def evaluate(model, ids, seq_len: int, max_windows: int | None = None) -> float:
    """Perplexity over non-overlapping ``seq_len`` windows (last partial one dropped)."""
    import torch

    n_win = ids.numel() // seq_len
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    windows = ids[: n_win * seq_len].view(n_win, seq_len).long()
    total_nll, total_tok = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        for i in range(0, n_win, 16):
            x = windows[i : i + 16].to(device)
            logits = model(input_ids=x).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += nll.item()
            total_tok += x[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_nll / total_tok)


def main(argv=None) -> int:
    args = parse_args(argv)

    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()

    train_txt = args.text_dir / "train.txt"
    heldout_txt = args.text_dir / "heldout.txt"
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    # ---- tokenizer -------------------------------------------------------
    tok = train_tokenizer(train_txt, MODEL_DIMS["vocab_size"])
    assert tok.get_vocab_size() == MODEL_DIMS["vocab_size"], tok.get_vocab_size()
    hf_tok = wrap_tokenizer(tok, MODEL_DIMS["max_position_embeddings"])
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)

    def encode(path: Path) -> torch.Tensor:
        text = path.read_text(encoding="utf-8")
        ids = tok.encode(text).ids
        assert max(ids) < 32768
        return torch.tensor(ids, dtype=torch.int16)

    train_ids = encode(train_txt)
    heldout_ids = encode(heldout_txt)
    print(f"tokens: train={train_ids.numel()} heldout={heldout_ids.numel()} "
          f"(chars/token {len(train_txt.read_text(encoding='utf-8')) / train_ids.numel():.2f})",
          flush=True)

    # ---- model -----------------------------------------------------------
    config = LlamaConfig(
        **MODEL_DIMS,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attention_dropout=args.attention_dropout,
        use_cache=True,
    )
    model = LlamaForCausalLM(config).float().to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    hooks = add_residual_dropout(model, args.dropout) if args.dropout > 0 else []
    print(f"params: {n_params:,}", flush=True)

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        prog = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cos)

    gen = torch.Generator().manual_seed(args.seed)
    data = train_ids.long()
    n_start = data.numel() - args.seq_len - 1
    offs = torch.arange(args.seq_len + 1)

    model.train()
    t_train = time.time()
    loss_ema = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, n_start, (args.batch_size,), generator=gen)
        batch = data[starts[:, None] + offs[None, :]].to(args.device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d}/{args.steps} loss {loss.item():.4f} ema {loss_ema:.4f} "
                  f"lr {lr_at(step):.2e} {el:7.1f}s ({el / (step + 1):.2f}s/step)", flush=True)
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            ppl = evaluate(model, heldout_ids, args.seq_len, max_windows=args.eval_windows or None)
            print(f"  eval step {step}: heldout ppl (fp32, {args.eval_windows or 'all'} windows) {ppl:.2f}",
                  flush=True)
        if args.max_minutes and (time.time() - t_train) > 60 * args.max_minutes:
            print(f"stopping early at step {step} (--max-minutes)", flush=True)
            break
    train_s = time.time() - t_train
    for h in hooks:
        h.remove()
    model.config.attention_dropout = 0.0  # inference config: no dropout
    print(f"training time: {train_s:.1f}s", flush=True)

    # ---- save ------------------------------------------------------------
    for stale in out.glob("*"):
        if stale.name in {"README.md"}:
            continue
        if stale.is_file():
            stale.unlink()
    model = model.to("cpu", torch.bfloat16)
    model.config.use_cache = True
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    meta = {"format": "pt", "source": "turbopack/assets/text", "tokenizer": "tokenizer.json"}
    save_file({"input_ids": heldout_ids.contiguous()}, str(out / "heldout_ids.safetensors"),
              metadata={**meta, "text": "heldout.txt"})
    # keep only what is needed
    for junk in list(out.glob("*.bin")) + list(out.glob("*.pt")) + list(out.glob("training_args*")):
        junk.unlink()

    # ---- final evaluation: saved bf16 weights, fp32 compute ----------------
    reloaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).float()
    ppl = evaluate(reloaded, heldout_ids, args.seq_len)
    ppl_train = evaluate(reloaded, train_ids, args.seq_len, max_windows=64)
    n_win = heldout_ids.numel() // args.seq_len
    print(f"train ppl (bf16 weights, fp32 compute, first 64 windows): {ppl_train:.2f}")
    print(f"heldout ppl (bf16 weights, fp32 compute, {n_win} x {args.seq_len}-token windows): {ppl:.2f}")
    print(f"total time: {time.time() - t_start:.1f}s")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:28s} {f.stat().st_size:>10,d} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
