"""Text -> fixed-length token windows, streamed in batches.

The text is tokenized (a growing prefix, so a large file is not tokenized past
`max_tokens`), cut into non-overlapping windows of `seq_len` tokens, and the
tail shorter than a window is dropped; a text shorter than one window gives a
single shorter window. If the tokenizer normally starts a sequence with BOS,
each window starts with BOS (counted in `seq_len`), as the model saw in training.
All windows have one length, so there is no padding to mask out.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dus.errors import InputError


def token_windows(tokenizer, text: str, max_tokens: int, seq_len: int) -> torch.Tensor:
    """[num_windows, window_len] token ids, at most `max_tokens` tokens in all."""
    if seq_len < 2:
        raise InputError(f"--seq-len must be >= 2, got {seq_len}")
    if max_tokens < 2:
        raise InputError(f"--max-tokens must be >= 2, got {max_tokens}")
    bos = _bos_id(tokenizer)
    body = seq_len - (bos is not None)
    ids = _tokenize_prefix(tokenizer, text, max_tokens)
    count = max(1, min(len(ids), max_tokens) // seq_len)
    width = min(body, len(ids) // count)
    if width < 2 - (bos is not None):
        raise InputError(f"the text has {len(ids)} token(s): need at least 2 to measure anything")
    rows = [ids[i * width : (i + 1) * width] for i in range(count)]
    if bos is not None:
        rows = [[bos] + r for r in rows]
    return torch.tensor(rows, dtype=torch.long)


def batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    yield from windows.split(batch_size)


def _bos_id(tokenizer) -> int | None:
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    probe = tokenizer("a").input_ids
    return bos if probe and probe[0] == bos else None


def _tokenize_prefix(tokenizer, text: str, max_tokens: int) -> list[int]:
    chars = max_tokens * 8
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False).input_ids
        if len(ids) > max_tokens or chars >= len(text):  # past the limit, the cut-off last token is dropped
            return ids[:max_tokens]
        chars *= 2
