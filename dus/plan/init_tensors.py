"""The tensors of layers made by a computed initialiser (dus/plan/insert.py): aligned-average and predicted.

Layout gives an inserted layer as the blend of its two neighbours p and p+1 with the residual-output
projections zeroed; here each of its other tensors becomes a computed tensor (dus/write/ops_init.py),
driven only by what dus_plan.json records (`recipe.init`: the layers, the solver settings), so
`dus verify` recomputes the same tensors. The zeroed projections keep the layer an identity block.
"""

from __future__ import annotations

from dataclasses import replace

from dus.errors import InputError
from dus.plan.layout import Computed, TensorSpec
from dus.read.architecture import split_layer_name

# Module -> the group whose units are aligned: MLP neurons, or attention key/value groups (whole heads).
ALIGNED = {
    "mlp.gate_proj": "mlp",
    "mlp.up_proj": "mlp",
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "kv",
    "self_attn.v_proj": "kv",
}
FEATURES = {
    "mlp": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "attention": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
}


def initialised(specs: list[TensorSpec], plan, sources: dict) -> list[TensorSpec]:
    record = plan.recipe["init"]
    base = sources[plan.base]
    inserted = set(record["layers"])
    out = []
    for spec in specs:
        split = split_layer_name(spec.name, base.layer_prefix)
        if split is None or split[0] not in inserted or not spec.parts:
            out.append(spec)
            continue
        index, suffix = split
        p = plan.layers[index].inputs[0].layer
        if record["name"] == "aligned-average":
            out.append(_aligned(spec, suffix, base, p, record["sinkhorn"]))
        else:
            out.append(_predicted(spec, suffix, base, p, record["predictor"]))
    return out


def _aligned(spec: TensorSpec, suffix: str, base, p: int, sinkhorn: dict) -> TensorSpec:
    module, _, kind = suffix.rpartition(".")
    unit = ALIGNED.get(module)
    if unit is None:  # norms (and q/k norms): the plain average layout planned
        return spec
    group = "mlp" if unit == "mlp" else "attention"
    layers = base.layer_tensors
    try:
        features = [base.tensors[layers[q][name]] for q in (p, p + 1) for name in FEATURES[group]]
    except KeyError as e:
        raise InputError(
            f"--init aligned-average aligns LLaMA-style layers (q/k/v/o_proj, gate/up/down_proj); "
            f"this one has no {e.args[0]}"
        ) from None
    config = base.config
    heads = config["num_attention_heads"]
    params = {
        "unit": unit,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "heads": heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        **sinkhorn,
    }
    inputs = (base.tensors[layers[p][suffix]], base.tensors[layers[p + 1][suffix]], *features)
    return replace(spec, computed=Computed("aligned_average", inputs, tuple(sorted(params.items()))))


def _predicted(spec: TensorSpec, suffix: str, base, p: int, predictor: dict) -> TensorSpec:
    inputs = tuple(base.tensors[base.layer_tensors[q][suffix]] for q in range(base.num_layers))
    params = {"after": p, **predictor}
    return replace(spec, computed=Computed("lesa_predict", inputs, tuple(sorted(params.items()))))
