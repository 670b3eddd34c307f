"""The output config: the source config with its per-layer facts remapped.

Per-layer lists (`layer_types`, `no_rope_layers`, per-layer sizes, ...) are
reindexed by each output layer's source layer; index lists (`mlp_only_layers`,
`moe_layers`, ...) are rebuilt. Layer patterns given by a formula (period and
offset, every k-th layer, first k layers) are checked: if the plan breaks the
pattern the formula cannot describe the new stack, and we refuse rather than
write a model that silently differs from its plan.
"""

from __future__ import annotations

import copy

from dus.errors import InputError
from dus.read.architecture import layer_count_key

PER_LAYER_KEYS = {
    "layer_types", "mlp_layer_types", "no_rope_layers", "attention_types_per_layer", "block_types",
    "layers_block_type", "intermediate_size", "num_key_value_heads", "num_attention_heads",
    "num_query_heads", "num_kv_heads", "ffn_multipliers", "head_dim", "sliding_window",
}
INDEX_LIST_KEYS = {
    "mlp_only_layers", "full_attn_idxs", "moe_layers", "attn_layer_indices", "global_attn_layers",
    "sliding_window_layers", "linear_attn_layers", "swa_layers", "no_rope_layer_idxs", "full_attention_layers",
}
INDEX_LIST_SUFFIXES = ("_layers", "_idxs", "_indices", "_layer_ids")  # other lists of ints so named are indices too
# Formulas that say which layers are special: name -> (keys needed, predicate(i, config)).
LAYER_FORMULAS = {
    "attn_layer_period/attn_layer_offset": (
        ("attn_layer_period", "attn_layer_offset"), lambda i, c: i % c["attn_layer_period"] == c["attn_layer_offset"]),
    "expert_layer_period/expert_layer_offset": (
        ("expert_layer_period", "expert_layer_offset"), lambda i, c: i % c["expert_layer_period"] == c["expert_layer_offset"]),
    "decoder_sparse_step": (("decoder_sparse_step",), lambda i, c: (i + 1) % max(c["decoder_sparse_step"], 1) == 0),
    "first_k_dense_replace": (("first_k_dense_replace",), lambda i, c: i >= c["first_k_dense_replace"]),
    "moe_layer_freq": (("moe_layer_freq",), lambda i, c: i % max(c["moe_layer_freq"], 1) == 0),
}
TORCH_DTYPES = ("float32", "float16", "bfloat16")


def output_config(config: dict, source_layers: list[int], dtype: str | None = None,
                  overrides: dict | None = None) -> dict:
    """The config of a stack whose output layer i is source layer source_layers[i]."""
    out = copy.deepcopy(config)
    key = layer_count_key(config)
    n = config[key]
    for name, value in config.items():
        if isinstance(value, list):
            out[name] = _remap_list(name, value, n, source_layers)
    _check_formulas(config, source_layers)
    out[key] = len(source_layers)
    _sync_max_window_layers(out)
    dtype = dtype or out.get("dtype") or out.get("torch_dtype")
    if dtype:
        # transformers 5 reads `dtype`; 4.x and most other tools read `torch_dtype`.
        out["dtype"] = out["torch_dtype"] = dtype
    return apply_overrides(out, overrides or {})


def planned_config(plan, base_config: dict) -> dict:
    """The output config a Plan implies for its base source's config."""
    dtype = None if plan.dtype == "auto" else plan.dtype
    return output_config(base_config, [layer.source_layer for layer in plan.layers], dtype, plan.config_overrides)


def _remap_list(name: str, value: list, n: int, source_layers: list[int]) -> list:
    if name in INDEX_LIST_KEYS or (name not in PER_LAYER_KEYS and _is_index_list(name, value, n)):
        wanted = set(value)
        return [i for i, src in enumerate(source_layers) if src in wanted]
    if len(value) == n and (name in PER_LAYER_KEYS or "layer" in name):
        return [copy.deepcopy(value[src]) for src in source_layers]
    if name in PER_LAYER_KEYS and len(value) != n and len(value) > 1:
        raise InputError(f"config field {name!r} has {len(value)} entries for {n} layers")
    return value


def _is_index_list(name: str, value: list, n: int) -> bool:
    return (name.endswith(INDEX_LIST_SUFFIXES) and len(value) != n
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in value))


def _check_formulas(config: dict, source_layers: list[int]) -> None:
    for label, (keys, is_special) in LAYER_FORMULAS.items():
        if not all(isinstance(config.get(k), int) for k in keys):
            continue
        for i, src in enumerate(source_layers):
            if is_special(i, config) != is_special(src, config):
                raise InputError(f"config describes its layers by the formula {label}, which cannot express this "
                                 f"plan (output layer {i} would differ from its source layer {src}); refusing to "
                                 "write a model that differs from its plan")
    pattern = config.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0 and "layer_types" not in config:
        for i, src in enumerate(source_layers):
            if ((i + 1) % pattern == 0) != ((src + 1) % pattern == 0):
                raise InputError("config describes its sliding-window layers by sliding_window_pattern, which "
                                 f"cannot express this plan (output layer {i} vs source layer {src})")


def _sync_max_window_layers(config: dict) -> None:
    """Qwen2-style threshold: layers below max_window_layers use full attention.

    transformers 5 follows `layer_types`; we set the threshold to the length of
    the leading run of full-attention layers so both say the same where they can.
    """
    types = config.get("layer_types")
    if "max_window_layers" not in config or not isinstance(types, list):
        return
    if "sliding_attention" not in types:
        config["max_window_layers"] = len(types)
        return
    config["max_window_layers"] = types.index("sliding_attention")


def apply_overrides(config: dict, overrides: dict) -> dict:
    """Merge a recipe's config overrides; a None value deletes the key."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
