"""`dus eval` and `dus contamination` as functions: options in, results computed and written, nothing printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dus.errors import InputError
from dus.eval.options import ContaminationOptions, EvalOptions


def main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch, or a single process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def evaluate(opts: EvalOptions, say=None, bar=None):
    """lm-eval tasks and/or perplexity; rank 0 writes results.json, results.md (and perplexity.json) to --output.
    `say(line)` is told what a perplexity will measure before the model loads; `bar(label, total)` makes a
    progress bar (dus.bars.CountBar)."""
    from dus.eval import harness
    from dus.eval.results import Report, model_fingerprint, write

    if not opts.tasks and opts.perplexity is None:
        raise InputError("give --tasks and/or --perplexity")
    out = opts.output if opts.output and main_process() else None  # every rank reads finished scores, rank 0 writes
    report = Report(opts.model, limit=opts.limit, seed=opts.seed, fingerprint=model_fingerprint(opts.model))
    benchmarks = harness.parse_tasks(opts.tasks, opts.num_fewshot, opts.metric) if opts.tasks else []
    plan = harness.prepare(report, benchmarks, opts.include_path, opts.output) if benchmarks else None
    if opts.perplexity is not None:  # the plan above fails before any model loads
        report.perplexity = _perplexity(opts, out, say, bar)
    if plan is not None:
        size = int(opts.batch_size) if opts.batch_size.isdigit() else opts.batch_size
        harness.evaluate(report, benchmarks, plan, opts.device, opts.dtype, size, out)
    if out:
        write(report, out)
    return report


def _perplexity(opts: EvalOptions, out: str | None, say=None, bar=None) -> dict:
    from contextlib import nullcontext

    from dus.eval.perplexity import text_windows, windows_perplexity
    from dus.instruct.load import load_chat_tokenizer
    from dus.runtime import load_model

    path = Path(opts.perplexity)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    windows = text_windows(load_chat_tokenizer(opts.model), text, opts.max_tokens, opts.window)
    if say:
        say(
            f"perplexity of {opts.model} on {path} ({len(text):,} characters): {windows.numel():,} tokens in "
            f"{len(windows):,} windows of {windows.shape[1]:,}"
        )
    lm, _ = load_model(opts.model, opts.device, opts.dtype)
    with bar("perplexity", len(windows)) if bar else nullcontext() as progress:
        result = windows_perplexity(lm, windows, advance=progress.advance if progress else None)
    result = {"data": str(path), **result, "window": opts.window, "max_tokens": opts.max_tokens}
    if out:  # the file earlier versions wrote; results.json holds the same under "perplexity"
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "perplexity.json").write_text(json.dumps({"model": opts.model, **result}, indent=2) + "\n")
    return result


def check_contamination(opts: ContaminationOptions):
    """(per-file results, settings); with --output, every example's score is written there as JSON."""
    from dus.eval.contamination import Settings, contamination

    s = Settings(
        examples=opts.examples,
        neighbours=opts.neighbours,
        prefix_ratio=opts.prefix_ratio,
        seed=opts.seed,
        batch_size=opts.batch_size,
        max_length=opts.max_length,
    )
    results = contamination(opts.target, opts.ref, opts.data, s, device=opts.device, dtype=opts.dtype)
    if opts.output:
        record = {
            "target": opts.target,
            "reference": opts.ref,
            "settings": vars(s),
            "results": [
                {"data": r.data, "examples": r.examples, "result < 0.1, %": r.share_below, "scores": r.scores}
                for r in results
            ],
        }
        Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return results, s
