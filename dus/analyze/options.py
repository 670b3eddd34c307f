"""`dus analyze` as a dataclass of options (dus/options.py makes them flags and --config keys) and one call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError
from dus.options import option, verbose_option

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


@dataclass
class AnalyzeOptions:
    model: str = option("", "Hugging Face model directory (config.json, weights, tokenizer).", positional=True,
                        required=True, metavar="MODEL")
    text: str = option("", "UTF-8 text file to run the model on.", required=True)
    max_tokens: int = option(8192, "Use at most this many tokens of the text.")
    seq_len: int = option(256, "Tokens per sequence (the text is cut into windows).")
    batch_size: int = option(8, "Sequences per forward pass.")
    output: str = option("dus-analysis", "Directory for analysis.json and the PNGs.")
    target_params: str | None = option(None, "Budget: up-scaled parameters, e.g. 250M.")
    target_layers: int | None = option(None, "Budget: up-scaled layers.")
    slack_layers: int = option(0, "Also consider DUS models up to this many layers below the budget.")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...")
    dtype: str = option("auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16.")
    verbose: bool = verbose_option()


def run(opts: AnalyzeOptions) -> tuple[dict, dict[str, Path]]:
    """Measure, recommend, and write analysis.json and the PNGs into --output: (result, written paths)."""
    from dus.analyze import analyze, write

    result = analyze(opts.model, read_text(Path(opts.text)), max_tokens=opts.max_tokens, seq_len=opts.seq_len,
                     batch_size=opts.batch_size, device=opts.device, dtype=opts.dtype,
                     target_params=count(opts.target_params), target_layers=opts.target_layers,
                     slack_layers=opts.slack_layers)
    return result, write(result, Path(opts.output))


def read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"--text {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--text {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def count(value: str | None) -> int | None:
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
