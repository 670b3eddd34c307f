"""The table `dus pipeline` ends with: per stage its output, key figures and time,
read from the result files each stage writes."""

from __future__ import annotations

import json
from pathlib import Path

from dus.manifest import read_manifest


def summary_table(steps) -> str:
    rows = ["| stage | output | figures | time |", "|---|---|---|---:|"]
    for step in steps:
        if step.status == "not selected":
            continue
        try:
            figures = FIGURES[step.stage.name](step.output, step.stage.options)
        except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError):
            figures = "(no results)"
        time = f"{step.seconds:.0f} s" if step.status == "ran" else step.status
        rows.append(f"| {step.stage.name} | {step.output} | {figures} | {time} |")
    return "\n".join(rows)


def _build(out: Path, options: dict) -> str:
    o = read_manifest(out)["output"]
    return f"{o['num_layers']} layers, {o['num_parameters']:,} parameters"


def _pretrain(out: Path, options: dict) -> str:
    r = json.loads((out / "run.json").read_text())["result"]
    text = f"{r['step']} steps, {r['tokens']:,} tokens, train loss {r['loss']:.3f}"
    return text + (f", eval loss {r['eval_loss']:.3f}" if r.get("eval_loss") is not None else "")


def _trained(out: Path, options: dict) -> str:
    r = read_manifest(out)["result"]
    losses = r["losses"]
    return f"{r['steps']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else f"{r['steps']} steps"


def _contamination(out: Path, options: dict) -> str:
    record = json.loads((out / "contamination.json").read_text())
    return (
        "; ".join(f"{Path(r['data']).stem} {r['result < 0.1, %']:.2f}" for r in record["results"])
        + " (result < 0.1, as a fraction)"
    )


def _eval(out: Path, options: dict) -> str:
    r = json.loads((out / "results.json").read_text())
    limit = r.get("limit", options.get("limit"))
    mark = "*" if limit else ""
    parts = [f"{s['task']} {100 * s['value']:.2f}{mark}" for s in r["scores"]]
    parts.append(f"{'H6' if r.get('h6') else 'average'} {100 * r['average']:.2f}{mark}")
    text = ", ".join(parts)
    return text + (f" (* --limit {limit}: smoke test, not comparable)" if limit else "")


FIGURES = {
    "build": _build,
    "pretrain": _pretrain,
    "sft": _trained,
    "dpo": _trained,
    "contamination": _contamination,
    "eval": _eval,
}
