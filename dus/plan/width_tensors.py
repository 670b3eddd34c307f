"""Width growth's tensors: each output tensor as the tiling that keeps the function (dus/plan/width.py
derives the rules; dus/write/ops_width.py computes them)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from dus.errors import InputError
from dus.plan.layout import Computed, TensorSpec
from dus.plan.width import GEMMA, check_family, scales
from dus.read.architecture import split_layer_name

# Layer module -> (output grows by, input grows by, scale kind).
# Dims: "hidden" (×F), "heads" (×F, whole heads), "mlp" (×F·mlp factor), None (kept).
# Scale kinds: 1, "qk" (c where q/k feed an RMSNorm, else 1), "residual" (c).
_LAYER = {
    "self_attn.q_proj": ("heads", "hidden", "qk"),
    "self_attn.k_proj": ("heads", "hidden", "qk"),
    "self_attn.v_proj": ("heads", "hidden", 1),
    "self_attn.o_proj": ("hidden", "heads", "residual"),
    "mlp.gate_proj": ("mlp", "hidden", 1),
    "mlp.up_proj": ("mlp", "hidden", 1),
    "mlp.down_proj": ("hidden", "mlp", "residual"),
}
_NORMS = {
    "input_layernorm": 1,
    "post_attention_layernorm": 1,
    "pre_feedforward_layernorm": 1,
    "post_feedforward_layernorm": "residual",
    "self_attn.q_norm": None,
    "self_attn.k_norm": None,
}


def widen(specs: list[TensorSpec], config: dict, layer_prefix: str, width: dict) -> list[TensorSpec]:
    """Every output tensor as the tiling that keeps the function (a computed tensor, or zeros)."""
    check_family(config)
    e, c = scales(config, width)
    qk_norm = any(".q_norm." in s.name for s in specs)
    dims = {None: 1, "hidden": width["factor"], "heads": width["factor"], "mlp": width["factor"] * width["mlp_factor"]}
    kinds = {1: 1.0, "residual": c, "qk": c if qk_norm else 1.0}
    gemma = config.get("model_type") in GEMMA
    # Beside a pre-feedforward norm (Gemma-2/3), post_attention_layernorm normalises the attention's output
    # before the residual add; otherwise (LLaMA, Gemma) it is the MLP's input norm.
    sandwich = any(".pre_feedforward_layernorm." in s.name for s in specs)
    return [
        _widened(
            spec, tensor_role(spec.name, layer_prefix, sandwich, config["model_type"]), dims, kinds, e, gemma, width
        )
        for spec in specs
    ]


def tensor_role(name: str, prefix: str, sandwich: bool, model_type: str) -> tuple:
    """(out dim, in dim, scale kind, norm, embedding) of one tensor, or a refusal."""
    split = split_layer_name(name, prefix)
    module, _, kind = (split[1] if split else name).rpartition(".")
    if split is None:
        if module.endswith("embed_tokens") and kind == "weight":
            return None, "hidden", 1, False, True
        if module.endswith("lm_head") and kind == "weight":
            return None, "hidden", 1, False, False
        if module.endswith("norm") and kind == "weight":
            return "hidden", None, 1, True, False
    elif module in _LAYER and kind in ("weight", "bias"):
        out_dim, in_dim, scale = _LAYER[module]
        return out_dim, in_dim if kind == "weight" else None, scale, False, False
    elif module in _NORMS and kind == "weight":
        scale = "residual" if sandwich and module == "post_attention_layernorm" else _NORMS[module]
        return (None if scale is None else "hidden"), None, (1 if scale is None else scale), True, False
    raise InputError(
        f"width growth does not know the role of tensor {name!r} in a {model_type} model: "
        "refusing rather than writing a model that computes something else"
    )


def _widened(spec: TensorSpec, role: tuple, dims: dict, kinds: dict, e: float, gemma: bool, width: dict) -> TensorSpec:
    out_dim, in_dim, scale_kind, norm, embedding = role
    a, b = dims[out_dim], dims[in_dim]
    reps = (a, b) if len(spec.shape) == 2 else (a,)
    shape = tuple(d * r for d, r in zip(spec.shape, reps))
    if embedding:
        scale = e
    else:
        scale = kinds[scale_kind] / (b if len(spec.shape) == 2 else 1)
    if not spec.parts:  # zeroed (an identity block's projection): zeros of the new shape
        return replace(spec, shape=shape)
    if shape == spec.shape and scale == 1.0:  # kept as it is (q/k norms): a byte copy, proven as one
        return spec
    noise = width["noise"] if (b > 1 and not embedding and len(spec.shape) == 2) else 0.0
    params = {
        "reps": reps,
        "scale": scale,
        "weights": tuple(w for _, w in spec.parts),
        "factor": spec.factor,
        "gemma_norm": bool(norm and gemma),
    }
    if noise:
        params.update(noise=noise, seed=_seed(width["seed"], spec.name))
    computed = Computed("width_tile", tuple(info for info, _ in spec.parts), tuple(sorted(params.items())))
    return replace(spec, shape=shape, computed=computed)


def _seed(seed: int, name: str) -> int:
    """A per-tensor seed: the plan's seed and the tensor's name, stable across runs and machines."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=7).digest(), "little")
