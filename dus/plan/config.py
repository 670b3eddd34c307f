"""The output config: the source config with its per-layer facts remapped.

Per-layer lists (`layer_types`, `no_rope_layers`, per-layer sizes, ...) are
reindexed by each output layer's source layer; index lists (`mlp_only_layers`,
`moe_layers`, ...) and maps keyed by layer index (`per_layer_config`:
`{"05": {"head_dim": 512}}`) are rebuilt; a second layer-count field
(`num_blocks` beside `num_hidden_layers`) follows the first. Layer patterns
given by a formula (period and offset, every k-th layer, first k layers, a
start/end/interval range) get new parameters when some value expresses the new
stack, and are refused otherwise rather than written into a model that
silently differs from its plan. dus.checks.equivalence then checks the result
against what transformers builds.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

from dus.core.vocabulary import (
    EXTRA_COUNT_KEYS,
    INDEX_LIST_KEYS,
    INDEX_LIST_SUFFIXES,
    LAYER_FORMULAS,
    LAYER_MAP_KEYS,
    PER_LAYER_KEYS,
    PER_LAYER_STRING_KEYS,
)
from dus.errors import InputError
from dus.read.architecture import layer_count_key

# Formula parameters that may take a new value, with its candidates for an m-layer stack
# whose special layers are `wanted`.
FREE_PARAMETERS = {
    "attn_layer_offset": lambda m, wanted, c: range(max(c["attn_layer_period"], 1)),
    "expert_layer_offset": lambda m, wanted, c: range(max(c["expert_layer_period"], 1)),
    "first_k_dense_replace": lambda m, wanted, c: range(m + 1),
    "num_dense_layers": lambda m, wanted, c: range(m + 1),
    "moe_layer_start_index": lambda m, wanted, c: sorted({min(wanted, default=m), c["moe_layer_start_index"]}),
    "moe_layer_end_index": lambda m, wanted, c: sorted({max(wanted, default=-1), m - 1, c["moe_layer_end_index"]}),
}


def output_config(
    config: dict, source_layers: list[int], dtype: str | None = None, overrides: dict | None = None
) -> dict:
    """The config of a stack whose output layer i is source layer source_layers[i]."""
    out = copy.deepcopy(config)
    key = layer_count_key(config)
    n = config[key]
    for name, value in config.items():
        if isinstance(value, list):
            out[name] = _remap_list(name, value, n, source_layers)
        elif isinstance(value, str) and name in PER_LAYER_STRING_KEYS:
            out[name] = "".join(_remap_list(name, list(value), n, source_layers))
        elif isinstance(value, dict) and _is_layer_map(name, value, n):
            out[name] = _remap_map(value, source_layers)
        elif name in EXTRA_COUNT_KEYS and value == n:
            out[name] = len(source_layers)
    _solve_formulas(config, out, source_layers)
    _check_formulas(config, source_layers, out)
    out[key] = len(source_layers)
    _sync_max_window_layers(out)
    _set_dtype(out, dtype)
    return apply_overrides(out, overrides or {})


def nested_output_config(
    config: dict, stack_config: str, source_layers: list[int], dtype: str | None = None, overrides: dict | None = None
) -> dict:
    """A multimodal config whose nested `stack_config` (text_config) counts the grown stack: that one
    is remapped as output_config remaps a whole config; the other towers' configs are kept."""
    out = copy.deepcopy(config)
    out[stack_config] = output_config(config[stack_config], source_layers, dtype)
    _set_dtype(out, dtype)
    return apply_overrides(out, overrides or {})


def _set_dtype(config: dict, dtype: str | None) -> None:
    dtype = dtype or config.get("dtype") or config.get("torch_dtype")
    if dtype:
        # transformers 5 reads `dtype`; 4.x and most other tools read `torch_dtype`.
        config["dtype"] = config["torch_dtype"] = dtype


def planned_config(plan, base_config: dict) -> dict:
    """The output config a Plan implies for its base source's config (its nested config
    plan.recipe["stack_config"] remapped, when the plan grows a multimodal model's text stack)."""
    dtype = None if plan.dtype == "auto" else plan.dtype
    source_layers = [layer.source_layer for layer in plan.layers]
    if plan.moe:  # sparse upcycling: the dense output config (overrides applied) made MoE
        from dus.plan.moe_family import moe_config

        dense = output_config(widened_source_config(plan, base_config), source_layers, dtype, plan.config_overrides)
        return moe_config(dense, plan.moe)
    if plan.recipe.get("stack_config"):
        if plan.recipe.get("width"):
            raise InputError("width growth of a nested (multimodal) stack is not supported")
        return nested_output_config(
            base_config, plan.recipe["stack_config"], source_layers, dtype, plan.config_overrides
        )
    return output_config(widened_source_config(plan, base_config), source_layers, dtype, plan.config_overrides)


def widened_source_config(plan, base_config: dict) -> dict:
    """The base config, widened when the plan grows width (dus/plan/width.py): what each layer is compared with."""
    if not plan.recipe.get("width"):
        return base_config
    from dus.plan.width import widened_config

    return widened_config(base_config, plan.recipe["width"])


def _remap_list(name: str, value: list, n: int, source_layers: list[int]) -> list:
    if name in INDEX_LIST_KEYS or (name not in PER_LAYER_KEYS and _is_index_list(name, value, n)):
        wanted = set(value)
        return [i for i, src in enumerate(source_layers) if src in wanted]
    if len(value) == n and (name in PER_LAYER_KEYS or name in PER_LAYER_STRING_KEYS or "layer" in name):
        return [copy.deepcopy(value[src]) for src in source_layers]
    if name in PER_LAYER_KEYS and 1 < len(value) < n:
        # a shorter pattern repeats (RecurrentGemma's block_types); written out in full, which
        # dus.checks.equivalence then checks against the layers transformers builds
        return [copy.deepcopy(value[src % len(value)]) for src in source_layers]
    if (name in PER_LAYER_KEYS or name in PER_LAYER_STRING_KEYS) and len(value) != n and len(value) > 1:
        raise InputError(f"config field {name!r} has {len(value)} entries for {n} layers")
    return value


def _is_index_list(name: str, value: list, n: int) -> bool:
    return (
        name.endswith(INDEX_LIST_SUFFIXES)
        and len(value) != n
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in value)
    )


def _is_layer_map(name: str, value: dict, n: int) -> bool:
    """{"0": {...}, "05": {...}}: every key a layer index, under a known name or one that says layer."""
    if name not in LAYER_MAP_KEYS and ("layer" not in name or name.startswith("mtp")):
        return False
    return bool(value) and all(_layer_index(k, n) is not None for k in value)


def _layer_index(key, n: int) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        index = key
    elif isinstance(key, str) and key.isdigit():
        index = int(key)
    else:
        return None
    return index if 0 <= index < n else None


def _remap_map(value: dict, source_layers: list[int]) -> dict:
    """Entry i of the new map is the source map's entry for layer source_layers[i], keyed in the
    source's style: integers, or digit strings zero-padded to a common width when the source's were."""
    by_layer = {int(k): v for k, v in value.items()}
    kept = [i for i, src in enumerate(source_layers) if src in by_layer]
    if all(isinstance(k, int) for k in value):
        return {i: copy.deepcopy(by_layer[source_layers[i]]) for i in kept}
    padded = any(isinstance(k, str) and len(k) > 1 and k.startswith("0") for k in value)
    width = len(str(max(kept))) if padded and kept else 0
    return {str(i).zfill(width): copy.deepcopy(by_layer[source_layers[i]]) for i in kept}


def _solve_formulas(config: dict, out: dict, source_layers: list[int]) -> None:
    """Give a formula's free parameters (an offset, a first-k, a start/end) values under which
    output layer i is special exactly when its source layer is; leave them when none does."""
    m = len(source_layers)
    for keys, is_special in LAYER_FORMULAS.values():
        free = [k for k in keys if k in FREE_PARAMETERS]
        if not free or not all(isinstance(config.get(k), int) for k in keys):
            continue
        wanted = [i for i, src in enumerate(source_layers) if is_special(src, config)]
        for values in itertools.product(*(FREE_PARAMETERS[k](m, wanted, config) for k in free)):
            trial = {**config, **dict(zip(free, values))}
            if [i for i in range(m) if is_special(i, trial)] == wanted:
                out.update(zip(free, values))
                break


def _check_formulas(config: dict, source_layers: list[int], out: dict | None = None) -> None:
    out = config if out is None else out
    for label, (keys, is_special) in LAYER_FORMULAS.items():
        if not all(isinstance(config.get(k), int) for k in keys):
            continue
        for i, src in enumerate(source_layers):
            if is_special(i, out) != is_special(src, config):
                raise InputError(
                    f"config describes its layers by the formula {label}, which cannot express this "
                    f"plan (output layer {i} would differ from its source layer {src}); refusing to "
                    "write a model that differs from its plan"
                )
    pattern = config.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0 and "layer_types" not in config:
        for i, src in enumerate(source_layers):
            if ((i + 1) % pattern == 0) != ((src + 1) % pattern == 0):
                raise InputError(
                    "config describes its sliding-window layers by sliding_window_pattern, which "
                    f"cannot express this plan (output layer {i} vs source layer {src})"
                )


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


def equivalence_request(plan, base, output_config: dict, allow_index_dependent: bool = False) -> dict:
    """dus.checks.equivalence.check_layers' arguments for a Plan over its base Source (JSON, for a child process). A
    recipe's scalar config overrides (e.g. SOLAR's model_type: llama over Mistral) apply to both
    sides: they are the user's choice, not a difference the copy introduces."""
    upcycled = {}
    if plan.moe:  # the layers are compared as dense copies; dus/checks/upcycle_check.py compares the MoE with them
        output_config = planned_config(dataclasses.replace(plan, moe={}), base.config)
        upcycled = {"moe": moe_request(plan, base)}
    scalars = {
        k: v for k, v in plan.config_overrides.items() if not isinstance(v, (list, dict)) and k not in EXTRA_COUNT_KEYS
    }
    source_config = apply_overrides(widened_source_config(plan, base.config), scalars)
    return {
        "source_config": source_config,
        "output_config": output_config,
        "source_layers": [layer.source_layer for layer in plan.layers],
        "layer_prefix": base.layer_prefix,
        "allow_index_dependent": allow_index_dependent,
        "stack_config": base.stack_config,
        **upcycled,
    }


def moe_request(plan, base) -> dict | None:
    """dus.checks.upcycle_check.check_moe's arguments for an upcycled plan (JSON, for the checks' child process)."""
    if not plan.moe or plan.moe.get("format") == "gguf":
        return None
    from dus.plan.moe_family import family_of_target

    return {
        "dense_config": planned_config(dataclasses.replace(plan, moe={}), base.config),
        "moe_config": planned_config(plan, base.config),
        "block": family_of_target(plan.moe).block,
        "layer_prefix": base.layer_prefix,
    }
