"""Chat templates: the SOLAR-Instruct one shipped with dus, and rendering.

The shipped file is dus/instruct/templates/solar.jinja; configs/chat_templates/
solar.jinja in the repository is a copy for people browsing configs (a test
keeps the two identical).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dus.errors import InputError

BUILTIN = ("solar",)


def builtin_template(name: str) -> str:
    text = resources.files("dus.instruct").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")
    # An editor's trailing newline would end up in the saved tokenizer, so the
    # template would no longer be the published one byte for byte.
    return text.removesuffix("\n")


def resolve_template(spec: str) -> str:
    """`spec` is a built-in name ("solar") or a path to a Jinja file."""
    if spec in BUILTIN:
        return builtin_template(spec)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"chat template {spec!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
    return path.read_text(encoding="utf-8").removesuffix("\n")


def set_chat_template(tokenizer, spec: str | None) -> None:
    """Install `spec` on the tokenizer; with no spec, SOLAR's when it has none."""
    if spec is not None:
        tokenizer.chat_template = resolve_template(spec)
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = builtin_template("solar")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat as text, to be tokenized with the tokenizer's special tokens.

    The SOLAR card tokenizes the rendered prompt as plain text, so the
    tokenizer adds BOS. A template that writes BOS itself would get it twice;
    drop its copy when the tokenizer adds one anyway.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
