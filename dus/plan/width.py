"""Width growth (HyperCloning, arXiv 2409.12903): hidden size, heads and MLP grown by integer factors.

The widened model's residual stream holds the source's hidden state tiled F times and scaled
by c: h' = c·[h, h, …, h]. Each tensor is tiled and scaled so that this holds layer after layer:

- a linear layer whose input is tiled b times and output a times: W' = tile(W, (a, b)) · k / b,
  where k = c when its output is added to the residual stream or feeds an RMSNorm, else 1;
- RMSNorm of c·tile(x) with eps·c² is tile(RMSNorm(x)) exactly: norm weights are tiled, and
  rms_norm_eps becomes eps·c²; a norm whose output is added to the residual (Gemma-2/3's post
  norms) is scaled by c (Gemma's (1 + w) form: w' = c·(1 + w) − 1);
- attention: query and key/value heads ×F with the head size kept, so each head is cloned F
  times and grouped-query attention maps clone copies to clone copies;
- the LM head reads tile(norm(h)): W' = tile(W, (1, F)) / F gives the source's logits.

c is forced by the embeddings: E' = tile(E) · e. With tied embeddings the LM head is E' too,
so e = 1/F; Gemma multiplies the embedding by sqrt(hidden_size), which grows by sqrt(F) = s;
then c = s·e (untied: e = 1/s, c = 1). For F a power of two every scale is exact in floating point.

This module holds the options and the config; dus/plan/width_tensors.py tiles the tensors.

`--mlp-width F` (Net2Net) grows only the MLP: intermediate neurons cloned, the down projection's
columns divided by F. `--width-noise SCALE` adds to each linear layer whose input is tiled a
noise that sums to zero over the input clones (so W'·tile(x) is unchanged in exact arithmetic),
different for each output clone, so the clones receive different gradients and diverge.
"""

from __future__ import annotations

import math

from dus.errors import InputError
from dus.plan.options import PlanOptions

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
GEMMA = ("gemma", "gemma2", "gemma3_text")


def width_options(options: PlanOptions) -> dict | None:
    """The plan's width record from the options (None: no width growth)."""
    width, mlp, noise = options.width, options.mlp_width, options.width_noise
    if width is None and mlp is None:
        if noise is not None:
            raise InputError("--width-noise needs --width or --mlp-width")
        return None
    factor, mlp_factor = _integer(width, "--width"), _integer(mlp, "--mlp-width")
    if factor == 1 and mlp_factor == 1:
        return None
    noise = float(noise or 0.0)
    if not math.isfinite(noise) or noise < 0:
        raise InputError(f"--width-noise must be a finite number >= 0, got {noise:g}")
    return {"factor": factor, "mlp_factor": mlp_factor, "noise": noise, "seed": int(options.width_seed or 0)}


def _integer(value, flag: str) -> int:
    if value is None:
        return 1
    number = float(value)
    if number != int(number) or number < 1:
        raise InputError(
            f"{flag} {number:g} is not a whole number >= 1: tiling keeps the model's function only when "
            "every neuron and head is cloned the same number of times"
        )
    return int(number)


def check_family(config: dict) -> None:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(
            f"width growth supports {', '.join(FAMILIES)}; {model_type!r} is not among them "
            "(the role of each of its tensors in a function-keeping widening is not known)"
        )
    missing = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size") if not config.get(k)]
    if missing:
        raise InputError(f"width growth needs {missing[0]!r} in config.json")


def scales(config: dict, width: dict) -> tuple[float, float]:
    """(e, c): the embedding's scale and the residual stream's (see the module docstring)."""
    factor = width["factor"]
    s = math.sqrt(factor) if config.get("model_type") in GEMMA else 1.0
    if config.get("tie_word_embeddings", config.get("model_type") in GEMMA):
        return 1.0 / factor, s / factor
    return 1.0 / s, 1.0


def widened_config(config: dict, width: dict) -> dict:
    check_family(config)
    factor, mlp_factor = width["factor"], width["mlp_factor"]
    _, c = scales(config, width)
    heads = config["num_attention_heads"]
    out = dict(config)  # head_dim, given or hidden_size / heads, is kept: heads grow, not their size
    out["hidden_size"] = config["hidden_size"] * factor
    out["num_attention_heads"] = heads * factor
    if config.get("num_key_value_heads"):
        out["num_key_value_heads"] = config["num_key_value_heads"] * factor
    out["intermediate_size"] = config["intermediate_size"] * factor * mlp_factor
    if c != 1.0:
        out["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * c * c
    return out
