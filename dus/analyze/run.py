"""`analyze`: load a model, measure it on a text, recommend an overlap, write the results."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dus.analyze.data import token_windows
from dus.analyze.measure import measure
from dus.analyze.options import AnalyzeOptions
from dus.analyze.plot import plot_distance, plot_influence
from dus.analyze.recommend import (
    apply_budget,
    check_budget,
    dus_sizes,
    explain,
    recommend_overlap,
)
from dus.errors import InputError
from dus.runtime import check_weights, decoder_layers, load_model, load_tokenizer

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
INDEXING = (
    "hidden_states[0] = embeddings = input of layer 0; hidden_states[i] = output of layer i-1 = input of "
    "layer i; hidden_states[n] = output of layer n-1 before the final norm"
)


def analyze(
    model_dir: str | Path,
    text: str,
    *,
    max_tokens: int = 8192,
    seq_len: int = 256,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    target_params: int | None = None,
    target_layers: int | None = None,
    slack_layers: int = 0,
    output: str | Path | None = None,
) -> dict:
    """Measure per-layer influence and layer distances of `model_dir` on `text`; return (and write) the analysis."""

    start = time.time()
    budget = dict(target_params=target_params, target_layers=target_layers, slack_layers=slack_layers)
    check_budget(**budget)
    model_dir = check_weights(model_dir)
    windows = token_windows(load_tokenizer(model_dir), text, max_tokens, seq_len)
    model, device = load_model(model_dir, device, dtype)
    layer_params = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)]
    other_params = sum(p.numel() for p in model.parameters()) - sum(layer_params)
    apply_budget(dus_sizes(layer_params, other_params), **budget)  # a bad budget fails before the slow part
    result = {
        "model": str(model_dir),
        "num_layers": len(layer_params),
        "device": str(device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "hidden_state_indexing": INDEXING,
    }
    result.update(measure(model, windows, batch_size, device))
    result["layer_params"] = layer_params
    result["other_params"] = other_params
    result["recommendation"] = recommend_overlap(result["distance"], layer_params, other_params, **budget)
    result["seconds"] = round(time.time() - start, 2)
    if output is not None:
        write(result, Path(output))
    return result


def write(result: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    name = Path(result["model"]).name
    paths = {"json": out / "analysis.json", "influence": out / "influence.png", "distance": out / "distance.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    plot_influence(result["influence"], paths["influence"], f"{name}: per-layer influence (Block Influence)")
    plot_distance(
        result["distance"], paths["distance"], result["recommendation"], f"{name}: distance between hidden states"
    )
    return paths


def build_command(result: dict) -> str:
    """The `dus build` line of the recommendation, to paste: SOURCE, an OUTPUT named after it, the overlap."""
    import shlex

    rec, model = result["recommendation"], result["model"]
    output = f"{Path(model).name}-dus{rec['layers']}"
    return shlex.join(["dus", "build", model, output, "--overlap", str(rec["overlap"])])


def summary(result: dict) -> str:
    return (
        f"{result['model']}: {result['num_layers']} layers, {result['tokens']} tokens in "
        f"{result['sequences']} sequences of {result['seq_len']} on {result['device']} "
        f"({result['seconds']:.1f}s)\n\n" + explain(result["recommendation"])
    )


def run(opts: AnalyzeOptions) -> tuple[dict, dict[str, Path]]:
    """`dus analyze`: measure, recommend, and write analysis.json and the PNGs into --output:
    (result, written paths)."""
    result = analyze(
        opts.model,
        read_text(Path(opts.text)),
        max_tokens=opts.max_tokens,
        seq_len=opts.seq_len,
        batch_size=opts.batch_size,
        device=opts.device,
        dtype=opts.dtype,
        target_params=count(opts.target_params),
        target_layers=opts.target_layers,
        slack_layers=opts.slack_layers,
    )
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
