"""`prepare: pydoc-topics`: a small local data set for every stage, made from Python's own help
topics (`pydoc_data.topics`, the text the tests use), so a recipe runs with nothing downloaded.

    pretrain/{train,eval}.jsonl   {"text"}: the topics, every eighth held out
    sft.jsonl                     chats: "What does the Python help say about X?" -> its opening
    dpo.jsonl                     the same prompts; chosen: X's opening, rejected: another topic's
    bench/seen.jsonl              question + answer rows the SFT data holds (contaminated)
    bench/unseen.jsonl            rows from held-out topics (clean)
    tasks/*.yaml                  lm-eval tasks named like H6's, over local JSONL (dus eval --include-path)

The files depend only on the Python version's help text; existing identical files are left alone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dus.errors import InputError

MC = {
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "{{answer}}",
    "metric_list": [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ],
}
GSM = {
    "output_type": "generate_until",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 8},
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    "filter_list": [
        {
            "name": "strict-match",
            "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}],
        }
    ],
}
MC_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande")
TEST_ITEMS, POOL_ITEMS = 10, 30  # the pool holds more than H6's largest shot count (ARC, 25)


def prepare(kind: str, directory: Path) -> Path:
    if kind != "pydoc-topics":
        raise InputError(f"prepare: unknown data set {kind!r} (known: pydoc-topics)")
    from pydoc_data.topics import topics

    names = sorted(topics)
    held = [n for i, n in enumerate(names) if i % 8 == 0]
    seen = [n for i, n in enumerate(names) if i % 8]
    files = {
        "pretrain/train.jsonl": [{"text": topics[n]} for n in seen],
        "pretrain/eval.jsonl": [{"text": topics[n]} for n in held],
        "sft.jsonl": [_chat(n, topics) for n in seen],
        "dpo.jsonl": [_pair(n, seen[(i + 7) % len(seen)], topics) for i, n in enumerate(seen)],
        "bench/seen.jsonl": [_qa(n, topics) for n in seen[:40]],
        "bench/unseen.jsonl": [_qa(n, topics) for n in held[:40]],
    }
    rng = random.Random(0)
    for task in MC_TASKS:
        for split, count in (("train", POOL_ITEMS), ("test", TEST_ITEMS)):
            files[f"tasks/{task}_{split}.jsonl"] = [_choice(rng, names, topics) for _ in range(count)]
    for split, count in (("train", POOL_ITEMS), ("test", TEST_ITEMS)):
        files[f"tasks/gsm8k_{split}.jsonl"] = [_sum(rng) for _ in range(count)]
    for rel, rows in files.items():
        _write(directory / rel, "".join(json.dumps(r) + "\n" for r in rows))
    for task in (*MC_TASKS, "gsm8k"):
        body = {
            "task": task,
            "dataset_path": "json",
            "training_split": "train",
            "fewshot_split": "train",
            "test_split": "test",
            "dataset_kwargs": {
                "data_files": {s: str(directory / f"tasks/{task}_{s}.jsonl") for s in ("train", "test")}
            },
            **(GSM if task == "gsm8k" else MC),
        }
        _write(directory / f"tasks/{task}.yaml", json.dumps(body, indent=2) + "\n")  # JSON is YAML
    return directory


def prepare_argv(kind: str, directory: Path) -> list[str]:
    """The command that makes the data set by hand (what `dus pipeline --dry-run` prints for `prepare:`)."""
    return ["python", "-m", "dus.pipeline.tinydata", kind, str(directory)]


def _opening(text: str, words: int = 40) -> str:
    return " ".join(text.split()[:words])


def _question(name: str) -> str:
    return f"What does the Python help say about {name}?"


def _chat(name: str, topics: dict) -> dict:
    return {
        "messages": [
            {"role": "user", "content": _question(name)},
            {"role": "assistant", "content": _opening(topics[name])},
        ]
    }


def _pair(name: str, other: str, topics: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": _question(name)}],
        "chosen": [{"role": "assistant", "content": _opening(topics[name])}],
        "rejected": [{"role": "assistant", "content": _opening(topics[other])}],
    }


def _qa(name: str, topics: dict) -> dict:
    return {"question": _question(name), "answer": _opening(topics[name])}


def _choice(rng: random.Random, names: list[str], topics: dict) -> dict:
    options = rng.sample(names, 4)
    answer = rng.randrange(4)
    return {
        "question": f"Which help topic begins: {_opening(topics[options[answer]], 12)}",
        "choices": options,
        "answer": answer,
    }


def _sum(rng: random.Random) -> dict:
    a, b = rng.randrange(10), rng.randrange(10)
    return {"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":  # python -m dus.pipeline.tinydata pydoc-topics DIR
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m dus.pipeline.tinydata pydoc-topics DIR")
    try:
        print(f"wrote {prepare(sys.argv[1], Path(sys.argv[2]))}")
    except InputError as e:
        sys.exit(f"error: {e}")
