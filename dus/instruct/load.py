"""The tokenizer a chat or instruction-tuning run uses: the runtime's, with the chat template applied."""

from __future__ import annotations

from dus.runtime import load_tokenizer as _load_tokenizer


def load_tokenizer(path: str, chat_template: str | None = None):
    from dus.instruct.template import set_chat_template

    tokenizer = _load_tokenizer(path)
    set_chat_template(tokenizer, chat_template)
    return tokenizer
