"""What a scan measures: perplexity on a text and accuracy on multiple-choice probes.

Perplexity is `dus eval --perplexity`'s: the same token windows
(dus.analyze.data.token_windows with eval's --window and --max-tokens), the
loss of every predicted token counted once. A .jsonl/.json/.parquet --text is
read as `dus pretrain --data` reads it (its `text` field), documents joined by
a blank line.

A probe file is JSONL, one question a line:
    {"context": "The capital of France is", "choices": [" Paris", " Rome"], "answer": 0}
`answer` is the index of the right choice or its text. Each choice is scored
by the summed log-likelihood of its tokens after the context (the context
tokenized with the tokenizer's special tokens, the choice without, and
appended); the question counts as right when the answer's is the highest.
Only the choice's positions go through the LM head.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from dus.errors import InputError

PERPLEXITY = "perplexity"


@dataclass
class Probe:
    name: str  # accuracy:<file stem>
    sequences: list[list[int]]  # context + choice token ids, every choice of every question
    choice_lengths: list[int]  # tokens of each sequence's choice
    questions: list[tuple[int, int, int]]  # (first sequence, number of choices, answer)


def read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--text {path}: no such file")
    if file.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return _documents(path)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--text {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _documents(path: str) -> str:
    from types import SimpleNamespace

    from dus.train.data import load_documents

    docs = load_documents([path], SimpleNamespace(streaming=False, cache_dir=None, text_field="text"))
    return "\n\n".join(docs["text"])


def text_windows(tokenizer, text: str, window: int, max_tokens: int | None) -> torch.Tensor:
    from dus.analyze.data import token_windows

    return token_windows(tokenizer, text, max_tokens or len(text), window)  # as dus.eval.perplexity cuts them


def read_probe(path: str, tokenizer, max_length: int | None) -> Probe:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--probe {path}: no such file")
    lines = [(k, line) for k, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError(f"--probe {path} is empty: give at least one question")
    probe = Probe(f"accuracy:{file.stem}", [], [], [])
    for k, line in lines:
        where = f"--probe {path} line {k}"
        context, choices, answer = _question(line, where)
        first = len(probe.sequences)
        context_ids = tokenizer(context).input_ids
        for choice in choices:
            ids = tokenizer(choice, add_special_tokens=False).input_ids
            if not ids:
                raise InputError(f"{where}: choice {choice!r} has no tokens to score")
            if not context_ids:
                raise InputError(f"{where}: the context has no tokens to condition on")
            if max_length and len(context_ids) + len(ids) > max_length:
                raise InputError(
                    f"{where}: {len(context_ids) + len(ids)} tokens, longer than the model's context ({max_length})"
                )
            probe.sequences.append(context_ids + ids)
            probe.choice_lengths.append(len(ids))
        probe.questions.append((first, len(choices), answer))
    return probe


def _question(line: str, where: str) -> tuple[str, list[str], int]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object with context, choices and answer")
    context, choices, answer = item.get("context"), item.get("choices"), item.get("answer")
    if not isinstance(context, str) or not context:
        raise InputError(f"{where}: `context` must be a non-empty string")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise InputError(f"{where}: `choices` must be a list of at least two non-empty strings")
    if isinstance(answer, str):
        if answer not in choices:
            raise InputError(f"{where}: the answer {answer!r} is not one of the choices")
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InputError(f"{where}: `answer` must be a choice or its index 0..{len(choices) - 1}, not {answer!r}")
    return context, choices, answer


def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[plans] summed NLL of each plan's predicted tokens of one window (logits [plans, T, V], ids [1, T]), reduced
    as dus.eval.perplexity reduces it (a transposed layout reduces in another order: ~1e-4 apart on SmolLM2)."""
    targets = ids[0, 1:]
    return torch.stack(
        [torch.nn.functional.cross_entropy(row[:-1].float(), targets, reduction="sum") for row in logits]
    )


def choice_loglik(logits: torch.Tensor, ids: torch.Tensor, length: int) -> torch.Tensor:
    """[plans] log-likelihood of the last `length` tokens of `ids`, from logits of the last length + 1 positions."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = ids[0, -length:]
    return logprobs[:, torch.arange(length), targets].sum(1)


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens)


def accuracy(probe: Probe, logliks: list[float]) -> float:
    right = 0
    for first, count, answer in probe.questions:
        scores = logliks[first : first + count]
        right += max(range(count), key=scores.__getitem__) == answer
    return right / len(probe.questions)


def lower_is_better(name: str) -> bool:
    return name == PERPLEXITY
