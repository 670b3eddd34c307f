"""The benchmark contamination test cited on the SOLAR-Instruct card.

A re-implementation of swj0419/detect-pretrain-code-contamination (the
"minkprob_w/_ref" score). For each of N sampled benchmark examples:

  text = question + " " + answer
  L    = the target model's mean token NLL on text
  the reference model samples K continuations of the first 40% of the words
  (top-k 50, temperature 1, as many new tokens as there were words left);
  these "neighbours" are texts of the same start the target has not seen
  score = share of neighbours whose target NLL is below L

Memorised text has a lower NLL than any neighbour, so its score is near 0.
The statistic is "result < 0.1, %": the share of examples scoring below 0.1,
a fraction as in the card's table (each printed value states it). The
repository reads a share above 0.9 as "highly likely trained on"; a clean
model sits far lower.

Accepted JSONL fields, first match wins: `text`; `input` (the repository's
processed form); `question` with `answer` (a string, or an index into
`choices`), `answerKey` (ARC: a label of `choices.label`) or `mc1_targets`
(TruthfulQA: the correct choice).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from dus.errors import InputError
from dus.eval.nll import mean_nll

THRESHOLD = 0.1


@dataclass
class Settings:
    examples: int = 100
    neighbours: int = 100
    prefix_ratio: float = 0.4
    top_k: int = 50
    seed: int = 0
    batch_size: int = 32
    max_length: int | None = None  # tokens scored per text; None: all
    threshold: float = THRESHOLD


@dataclass
class FileResult:
    data: str
    examples: int
    share_below: float  # "result < 0.1, %"
    scores: list[dict] = field(default_factory=list)


def _answer(rec: dict) -> str:
    if isinstance(rec.get("mc1_targets"), dict):
        t = rec["mc1_targets"]
        return t["choices"][t["labels"].index(1)]
    answer = rec.get("answer", rec.get("answerKey"))
    choices = rec.get("choices")
    if isinstance(choices, dict):  # ARC: {"text": [...], "label": ["A", ...]}
        labels, choices = choices.get("label", []), choices.get("text", [])
        if answer in labels:
            answer = labels.index(answer)
    if isinstance(answer, int) and isinstance(choices, list):
        return choices[answer]
    if isinstance(answer, str):
        return answer
    raise InputError(f"no answer in record with fields {sorted(rec)}")


def example_text(rec: dict) -> str:
    for key in ("text", "input"):
        if isinstance(rec.get(key), str):
            return rec[key]
    if isinstance(rec.get("question"), str):
        return f"{rec['question']} {_answer(rec)}"
    raise InputError(f"record has none of text / input / question+answer (fields {sorted(rec)})")


def read_examples(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [example_text(json.loads(ln)) for ln in lines if ln.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: {e}") from e


def pick(texts: list[str], n: int, seed: int) -> list[tuple[int, str]]:
    """n examples of a seeded shuffle, with their line numbers."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [(i, texts[i]) for i in order[:n]]


def neighbours(model, tokenizer, text: str, s: Settings, seed: int) -> list[str]:
    """K reference-model continuations of the text's first `prefix_ratio` words, prefix included."""
    import torch

    words = text.split()
    cut = math.ceil(len(words) * s.prefix_ratio)
    prefix = " ".join(words[:cut])
    ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(model.device)
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    out: list[str] = []
    while len(out) < s.neighbours:
        n = min(s.batch_size, s.neighbours - len(out))
        with torch.no_grad():
            gen = model.generate(
                ids,
                do_sample=True,
                top_k=s.top_k,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=max(1, len(words) - cut),
                min_new_tokens=1,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            )
        out += tokenizer.batch_decode(gen, skip_special_tokens=True)
    return out


def score_file(path: str, target, target_tok, ref, ref_tok, s: Settings) -> FileResult:
    picked = pick(read_examples(path), s.examples, s.seed)
    if not picked:
        raise InputError(f"{path}: no examples")
    losses = mean_nll(target, target_tok, [t for _, t in picked], s.batch_size, s.max_length)
    scores = []
    for (index, text), loss in zip(picked, losses):
        z = mean_nll(target, target_tok, neighbours(ref, ref_tok, text, s, s.seed + index), s.batch_size, s.max_length)
        score = sum(v < loss for v in z) / len(z)
        scores.append({"index": index, "score": score, "nll": loss, "neighbour_nll_mean": sum(z) / len(z)})
    share = sum(x["score"] < s.threshold for x in scores) / len(scores)
    return FileResult(path, len(scores), share, scores)


def contamination(
    target_path: str,
    ref_path: str,
    data: list[str],
    s: Settings | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> list[FileResult]:
    from dus.instruct.load import load_chat_tokenizer
    from dus.runtime import load_model

    s = s or Settings()
    if not data:
        raise InputError("give at least one --data file")
    target, _ = load_model(target_path, device, dtype)
    ref, _ = load_model(ref_path, device, dtype)
    target_tok, ref_tok = load_chat_tokenizer(target_path), load_chat_tokenizer(ref_path)
    return [score_file(p, target, target_tok, ref, ref_tok, s) for p in data]


def table(results: list[FileResult], threshold: float = THRESHOLD) -> str:
    """The card's header; each value says it is a fraction (0.03 is 3% of the examples)."""
    rows = [f"| data | examples | result < {threshold:g}, % |", "|---|---:|---:|"]
    rows += [
        f"| {r.data} | {r.examples} | {r.share_below:.2f} (fraction of examples; {100 * r.share_below:.0f}%) |"
        for r in results
    ]
    return "\n".join(rows)
