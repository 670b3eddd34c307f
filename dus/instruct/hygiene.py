"""Data hygiene before SFT/DPO, as on the SOLAR-Instruct card.

Two filters, each reporting how many examples it dropped:

* task filter: drop examples whose task/source field matches a name in a list
  (one per line, `#` comments, shell-style wildcards such as `*gsm8k*`);
* n-gram filter: drop examples sharing any word n-gram (default 13, the GPT-3
  and lm-evaluation-harness choice) with a local benchmark file. Words are
  lower-cased runs of letters/digits, so punctuation and spacing do not hide an
  overlap. Benchmark items shorter than n words cannot match: keep n small
  (8 or so) to catch short-answer sets at the cost of more false positives.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError

TASK_FIELDS = ("task", "task_name", "_task_name", "source")
NGRAM = 13
_WORD = re.compile(r"\w+")


@dataclass
class HygieneReport:
    total: int = 0
    by_task: int = 0
    by_ngram: int = 0
    kept: int = 0

    def line(self) -> str:
        return (
            f"data: {self.total} examples, dropped {self.by_task} by task filter, "
            f"{self.by_ngram} by n-gram overlap, {self.kept} kept"
        )


def read_task_list(path: str) -> list[str]:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such task list")
    lines = (ln.split("#", 1)[0].strip() for ln in Path(path).read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln]


def task_field(columns, requested: str | None) -> str:
    if requested is not None:
        if requested not in columns:
            raise InputError(f"task field {requested!r} is not a data column ({sorted(columns)})")
        return requested
    for name in TASK_FIELDS:
        if name in columns:
            return name
    raise InputError(f"--exclude-tasks needs a task column ({', '.join(TASK_FIELDS)}) or --task-field")


def matches_task(value, patterns: list[str]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(str(value), p) for p in patterns)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def strings(value):
    """Every string inside a JSON-like value (chats, answers, choice lists)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)


def benchmark_ngrams(paths: list[str], n: int) -> set[tuple[str, ...]]:
    """n-grams of every record of .jsonl/.json files (all string fields joined), or of .txt lines."""
    grams: set[tuple[str, ...]] = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{p}: no such benchmark file")
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix.lower() == ".json":
            records = json.loads("\n".join(lines))
            records = records if isinstance(records, list) else [records]
        elif path.suffix.lower() == ".jsonl":
            records = [json.loads(ln) for ln in lines if ln.strip()]
        else:
            records = lines
        for record in records:
            grams |= ngrams(" ".join(strings(record)), n)
    return grams


def overlaps(example: dict, grams: set, n: int, skip: tuple[str, ...] = ()) -> bool:
    text = " ".join(s for k, v in example.items() if k not in skip for s in strings(v))
    return not grams.isdisjoint(ngrams(text, n))


def clean(
    dataset,
    exclude_tasks: str | None = None,
    task_column: str | None = None,
    decontaminate: list[str] | None = None,
    n: int = NGRAM,
):
    """(filtered dataset, HygieneReport)."""
    report = HygieneReport(total=len(dataset))
    if exclude_tasks:
        column = task_field(dataset.column_names, task_column)
        patterns = read_task_list(exclude_tasks)
        dataset = dataset.filter(lambda ex: not matches_task(ex[column], patterns))
        report.by_task = report.total - len(dataset)
    if decontaminate:
        if n < 1:
            raise InputError("--ngram must be at least 1")
        grams = benchmark_ngrams(decontaminate, n)
        before = len(dataset)
        # The task name is not training text; "gsm8k" in it must not count as overlap.
        skip = tuple(TASK_FIELDS) + ((task_column,) if task_column else ())
        dataset = dataset.filter(lambda ex: not overlaps(ex, grams, n, skip))
        report.by_ngram = before - len(dataset)
    report.kept = len(dataset)
    return dataset, report
