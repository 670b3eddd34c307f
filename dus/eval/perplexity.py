"""Perplexity of a causal LM on a text, and the fixed real text we measure on.

The text is cut into equal non-overlapping token windows (no padding); the
loss of every predicted token counts once. `reference_text()` is Python's own
pydoc_data.topics (real English prose on every Python install), topics in
sorted order, so base and up-scaled models see identical tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dus.analyze.data import token_windows


def reference_text(max_chars: int | None = None, topics: Iterable[str] | None = None) -> str:
    """All pydoc topics, or only the keys in `topics`, in sorted key order, joined by blank lines."""
    from pydoc_data.topics import topics as all_topics

    keys = sorted(all_topics if topics is None else topics)
    text = "\n\n".join(all_topics[k].strip() for k in keys)
    return text[:max_chars] if max_chars else text


def perplexity(
    model, tokenizer, text: str, max_tokens: int | None = None, window: int = 512, batch_size: int = 4
) -> dict:
    """{"perplexity", "nll" (mean nats per predicted token), "tokens" (predicted)}."""
    return windows_perplexity(model, text_windows(tokenizer, text, max_tokens, window), batch_size)


def text_windows(tokenizer, text: str, max_tokens: int | None = None, window: int = 512):
    """The [windows, tokens] ids a perplexity is measured on (known before any model loads)."""
    limit = max_tokens or len(text)  # a token is at least one character
    return token_windows(tokenizer, text, limit, window)


def windows_perplexity(model, windows, batch_size: int = 4, advance=None) -> dict:
    """`advance(n)`: told of every n windows scored (a progress bar)."""
    import torch

    windows = windows.to(model.device)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += nll.item()
            count += batch[:, 1:].numel()
            if advance:
                advance(len(batch))
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count}
