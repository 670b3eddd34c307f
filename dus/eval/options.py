"""The options of `dus eval` and `dus contamination` (dus/options.py makes them flags and --config keys)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.options import device_option, dtype_option, option, seed_option, verbose_option


@dataclass
class EvalOptions:
    model: str = option("", "Model directory or Hub id.", positional=True, required=True, metavar="MODEL")
    tasks: str | None = option(None, "h6 and/or lm-eval task names, comma-separated.")
    perplexity: str | None = option(None, "A text file to measure perplexity on (no extra needed).")
    include_path: str | None = option(None, "Directory of local lm-eval task YAMLs.")
    num_fewshot: int | None = option(None, "Shots for tasks outside H6 [default: the task's].")
    metric: str | None = option(
        None,
        "Metric for tasks outside H6, e.g. acc or exact_match,strict-match "
        "[default: first of acc_norm, acc, exact_match, ...].",
    )
    limit: int | None = option(
        None, "At most N examples per task: a smoke test, recorded and marked not comparable in the results."
    )
    batch_size: str = option("auto", "lm-eval batch size, or auto.")
    max_tokens: int | None = option(None, "--perplexity: use at most this many tokens.")
    window: int = option(512, "--perplexity: tokens per scoring window.")
    seed: int = seed_option()
    device: str = device_option()
    dtype: str = dtype_option()
    output: str | None = option(
        None,
        "Directory for results.json and results.md (rewritten after each task; a rerun skips finished tasks).",
        short="-o",
    )
    verbose: bool = verbose_option()


@dataclass
class ContaminationOptions:
    target: str = option("", "The model under test.", positional=True, required=True, metavar="TARGET")
    ref: str = option("", "Reference model that writes the neighbours (e.g. the base model).", required=True)
    data: list[str] = option([], "Benchmark JSONL: text, input, or question + answer (repeatable).", required=True)
    examples: int = option(100, "N examples per file (seeded shuffle).")
    neighbours: int = option(100, "K reference samples per example.")
    prefix_ratio: float = option(0.4, "Share of words the neighbours start from.")
    batch_size: int = option(32, "Texts per forward pass.")
    max_length: int | None = option(None, "Score at most this many tokens per text.")
    seed: int = seed_option()
    device: str = device_option()
    dtype: str = dtype_option()
    output: str | None = option(None, "Write per-example scores to this JSON file.", short="-o")
    verbose: bool = verbose_option()
