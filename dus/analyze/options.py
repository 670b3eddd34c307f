"""`dus analyze` as a dataclass of options (dus/options.py makes them flags and --config keys)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.options import option, verbose_option


@dataclass
class AnalyzeOptions:
    model: str = option(
        "",
        "Hugging Face model directory (config.json, weights, tokenizer).",
        positional=True,
        required=True,
        metavar="MODEL",
    )
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
