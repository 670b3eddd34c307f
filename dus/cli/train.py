"""`dus pretrain` and `dus report`.

The pretrain options are `PretrainConfig`'s fields (dus/train/config.py): every YAML key
has a flag of the same name and help.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dus.cli import app
from dus.cli.options import options_command
from dus.train.config import PretrainConfig


@options_command(app, "pretrain", PretrainConfig)
def pretrain_command(config: PretrainConfig) -> None:
    """Continued pretraining of a (depth up-scaled) model on plain text.

    One process: `dus pretrain MODEL_DIR --data corpus/ --output runs/cpt`.
    Many GPUs: `torchrun --nproc-per-node 8 -m dus pretrain ...` (FSDP2).
    The trained model is saved as a Hugging Face directory in OUTPUT."""
    import os

    from dus.train.files import reading_line

    if os.environ.get("RANK", "0") == "0":  # before torch's import: a run says at once what it reads
        print(reading_line(config.model, config.data, config.seq_len, config.streaming), flush=True)
    from dus.train import pretrain

    pretrain(config)


@app.command("report")
def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN...", help="`dus pretrain` output directories"),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="PNG path [default: RUN/loss.png; for several runs, loss.png in the folder holding them]",
    ),
) -> None:
    """Plot runs' train and eval loss from their metrics.jsonl in one PNG, each run labelled in its colour."""
    from dus.train.report import plot_loss

    print(f"wrote {plot_loss(run_dirs, output)}")
