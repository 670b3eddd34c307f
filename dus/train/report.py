"""`dus report RUN...`: the loss curves (train and eval) of one or several runs in one PNG, from each run's
metrics.jsonl, each run in its own colour and labelled: one run's curve, or a growth study's runs overlaid."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dus.errors import InputError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"no metrics.jsonl in {run_dir}: is it a `dus pretrain` output directory?")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON lines: {e}") from None


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's name: its directory name, or its path below the runs' common folder where names repeat."""
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([Path(r).resolve() for r in run_dirs]))
    return [str(Path(r).resolve().relative_to(common)) for r in run_dirs]


def curves(run_dirs: list[Path]) -> list[dict]:
    """Per run: its label, train loss and eval loss as (step, loss) pairs."""
    out = []
    for run_dir, label in zip(run_dirs, run_labels(run_dirs)):
        records = read_metrics(run_dir)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        if not train and not evals:
            raise InputError(f"{Path(run_dir) / 'metrics.jsonl'} holds no loss records yet")
        out.append({"label": label, "train": train, "eval": evals})
    return out


def default_output(run_dirs: list[Path]) -> Path:
    """RUN/loss.png for one run; for several, loss.png in the folder that holds them all."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "loss.png"
    return Path(os.path.commonpath([Path(r).resolve() for r in run_dirs])) / "loss.png"


def plot_loss(run_dirs: str | Path | list, out: str | Path | None = None) -> Path:
    """The PNG's path. A run's train loss is a line, its eval loss dots on a dashed line, in the run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(r) for r in (run_dirs if isinstance(run_dirs, (list, tuple)) else [run_dirs])]
    if not run_dirs:
        raise InputError("give at least one RUN directory")
    drawn = curves(run_dirs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, run in enumerate(drawn):
        color = f"C{index % 10}"
        prefix = f"{run['label']}: " if len(drawn) > 1 else ""
        if run["train"]:
            ax.plot(*zip(*run["train"]), color=color, label=f"{prefix}train loss", linewidth=1)
        if run["eval"]:
            ax.plot(*zip(*run["eval"]), "o--", color=color, label=f"{prefix}eval loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(drawn[0]["label"] if len(drawn) == 1 else f"{len(drawn)} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(drawn) > 3 else 10)
    out = Path(out) if out else default_output(run_dirs)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
