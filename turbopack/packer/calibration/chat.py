"""Chat models: conversations rendered with the tokenizer's own chat template.

An instruct model sees its conversations wrapped in role markers and special tokens; calibrating it
on plain prose measures activations it never sees in use. So when the data has turns (a
``messages`` list of ``{"role", "content"}`` per record) and the model folder's
``tokenizer_config.json`` has a ``chat_template``, each conversation is rendered with that template
(Jinja, in a sandbox: the template comes with the model and is not trusted) and calibrated on as
text. Without a template the turns are joined as ``role: content`` lines, and the run says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turbopack.errors import TurbopackError

Messages = list[dict[str, Any]]


class ChatDataError(TurbopackError):
    """A record's turns, or the model's chat template, cannot be used."""


def chat_template(model_folder: Path) -> str | None:
    """The folder's chat template (the default one when it has several), or None."""
    path = Path(model_folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ChatDataError(f"{path}: not valid JSON; fix or remove it") from None
    tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(tpl, list):  # [{"name": ..., "template": ...}]: HF's several-template form
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    if tpl is None and (Path(model_folder) / "chat_template.jinja").is_file():
        tpl = (Path(model_folder) / "chat_template.jinja").read_text()
    return tpl if isinstance(tpl, str) and tpl.strip() else None


def _special(model_folder: Path, key: str) -> str:
    path = Path(model_folder) / "tokenizer_config.json"
    try:
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if isinstance(value, dict):  # AddedToken form
        value = value.get("content")
    return value if isinstance(value, str) else ""


def check_messages(messages: Any, where: str) -> Messages:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise ChatDataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\": str, \"content\": str}}")
    return messages


def renderer(model_folder: Path) -> tuple[Callable[[Messages], str], bool]:
    """(messages -> text, whether the model's chat template is used)."""
    tpl = chat_template(model_folder)
    if tpl is None:
        return (lambda msgs: "\n".join(f"{m['role']}: {m['content']}" for m in msgs)), False
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TurbopackError("rendering the model's chat template needs jinja2; pip install jinja2") from None

    def raise_exception(message):  # templates call this to reject a conversation
        raise ChatDataError(
            f"{model_folder}/tokenizer_config.json: the chat template rejects a conversation: {message}"
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(tpl)
    except TemplateError as e:
        raise ChatDataError(
            f"{model_folder}/tokenizer_config.json: chat_template does not parse ({e}); fix it"
        ) from None
    bos, eos = _special(model_folder, "bos_token"), _special(model_folder, "eos_token")

    def render(msgs: Messages) -> str:
        try:
            return compiled.render(messages=msgs, add_generation_prompt=False, bos_token=bos, eos_token=eos)
        except TemplateError as e:
            raise ChatDataError(f"{model_folder}/tokenizer_config.json: chat_template fails to render ({e})") from None

    return render, True
