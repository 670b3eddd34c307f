"""`dus analyze`: per-layer influence, layer distances and a recommended DUS overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dus.cli import app
from dus.errors import InputError

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


@app.command("analyze")
def analyze_command(
    model: Path = typer.Argument(..., help="Hugging Face model directory (config.json, weights, tokenizer)."),
    text: Path = typer.Option(..., "--text", help="UTF-8 text file to run the model on."),
    max_tokens: int = typer.Option(8192, "--max-tokens", help="Use at most this many tokens of the text."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per sequence (the text is cut into windows)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    output: Path = typer.Option(Path("dus-analysis"), "--output", help="Directory for analysis.json and the PNGs."),
    target_params: Optional[str] = typer.Option(None, "--target-params", help="Budget: up-scaled parameters, e.g. 250M."),
    target_layers: Optional[int] = typer.Option(None, "--target-layers", help="Budget: up-scaled layers."),
    slack_layers: int = typer.Option(0, "--slack-layers", help="Also consider DUS models up to this many layers below the budget."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16."),
    verbose: bool = typer.Option(False, "--verbose", help="Show library progress bars and warnings."),
) -> None:
    """Measure how much each layer changes the hidden state and how far apart layers are; recommend the overlap m."""
    from dus.analyze import analyze, summary
    from dus.analyze.run import write
    from dus.quiet import quiet

    quiet(verbose)  # stderr stays clean: progress bars would bury an `error:` line

    body = _read_text(text)
    result = analyze(model, body, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size, device=device,
                     dtype=dtype, target_params=_count(target_params), target_layers=target_layers,
                     slack_layers=slack_layers)
    paths = write(result, output)
    typer.echo(summary(result))
    typer.echo(f"\nwrote {paths['json']}, {paths['influence']}, {paths['distance']}")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"--text {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--text {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _count(value: str | None) -> int | None:
    """'250M', '1.5B', '135000000' -> an int."""
    if value is None:
        return None
    s = value.strip().lower().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(s[-1:], 1)
    try:
        number = float(s[:-1] if scale != 1 else s)
    except ValueError:
        raise InputError(f"--target-params {value!r}: use a count like 250000000, 250M or 1.5B") from None
    return int(round(number * scale))
