"""`dus report RUN_DIR`: the loss curve of a run (train and eval) as a PNG, from metrics.jsonl."""

from __future__ import annotations

import json
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


def plot_loss(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        raise InputError(f"{Path(run_dir) / 'metrics.jsonl'} holds no loss records yet")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1)
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
