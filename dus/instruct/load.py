"""The tokenizer a chat or instruction-tuning run uses: the runtime's, with the chat template applied."""

from __future__ import annotations

from dus.runtime import load_tokenizer


def load_chat_tokenizer(path: str, chat_template: str | None = None):
    """The runtime's tokenizer with the chat template (`chat_template`, else its own, else SOLAR's)."""
    from dus.instruct.template import set_chat_template

    tokenizer = load_tokenizer(path)
    set_chat_template(tokenizer, chat_template)
    return tokenizer
