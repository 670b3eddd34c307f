"""The options of `dus scan` (dus/options.py makes them flags and --config keys)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.options import device_option, dtype_option, option, verbose_option


@dataclass
class ScanOptions:
    source: str = option(
        "",
        "Model directory (safetensors) whose layers the plans repeat.",
        positional=True,
        required=True,
        metavar="SOURCE",
    )
    text: str | None = option(None, "Text to measure perplexity on (.txt; .jsonl/.json/.parquet: the text field).")
    probe: list[str] = option([], "Multiple-choice probe file, JSONL of context, choices, answer (repeatable).")
    layers: list[str] = option([], "Score these plans (dus build --layers syntax, repeatable) instead of a space.")
    space: str = option("single", "single: every repeated block [0,j)+[i,n); dus: SOLAR overlaps [0,n-m)+[m,n).")
    max_block: int | None = option(None, "Only plans that add at most this many layers.")
    max_layers: int | None = option(None, "Only plans of at most this many output layers.")
    budget: int | None = option(None, "Score at most N plans; a larger single-block space is searched coarse to fine.")
    select_on: str | None = option(
        None, "The score that ranks plans (and guides --budget's search) [default: perplexity, else the first probe]."
    )
    report_on: list[str] = option(
        [], "Held-out scores: measured for the base and the --top plans only, never used to rank (repeatable)."
    )
    top: int = option(10, "Plans shown, given held-out scores, and drawn as build commands (the best 3).")
    scale: list[str] = option(
        [],
        "Also score the --top plans with their repeated layers' residual outputs scaled by this factor "
        "(repeatable, e.g. 0.5; mergekit #198).",
    )
    scale_modules: str | None = option(
        None,
        "Modules --scale multiplies, comma-separated within a layer "
        "[default: the attention and MLP output projections, found as expand finds them].",
    )
    window: int = option(512, "--text: tokens per scoring window (as dus eval --perplexity).")
    max_tokens: int | None = option(None, "--text: use at most this many tokens (as dus eval --perplexity).")
    batch_size: int = option(
        4, "Plans that share their repeated layers run as one batch of up to this many (each with all its sequences)."
    )
    memory: str = option(
        "4GiB",
        "Keep the prefix cache (hidden states at every layer boundary) in memory up to "
        "this size; a larger one is a file under --out.",
    )
    device: str = device_option()
    device_map: str | None = option(None, "accelerate device map for a model larger than one device (e.g. auto).")
    dtype: str = dtype_option()
    out: str = option("dus-scan", "Directory for scan.json, heatmap.png; a rerun resumes from scan.json.")
    force: bool = option(False, "Start over even if --out holds a scan with other settings.")
    verbose: bool = verbose_option()
