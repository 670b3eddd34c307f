"""What a checkpoint's tensor names say about its decoder stack.

Nothing here is per-model: the layer-count key comes from the config, the
stack's key prefix (`model.layers.`, `transformer.h.`, `gpt_neox.layers.`,
...) is the first numbered name segment whose indices run exactly 0..n-1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from dus.core.vocabulary import LAYER_COUNT_KEYS
from dus.errors import InputError

_FIRST_INDEX = re.compile(r"^((?:[^.]+\.)*?)(\d+)\.(.+)$")

# Residual-branch output projections, zeroed to make an identity block (LLaMA-Pro).
_ATTN_OUT = re.compile(r"^(?:self_attn|attn|attention|self_attention|mixer)\.(?:o_proj|c_proj|dense|out_proj|wo)$")
_MLP_OUT = re.compile(
    r"^(?:mlp|feed_forward|ffn|block_sparse_moe)\.(?:.*\.)?(?:down_proj|c_proj|dense_4h_to_h|fc2|w2|fc_out)$"
)


def refuse_encoder_decoder(config: dict) -> None:
    if config.get("is_encoder_decoder") or "encoder_layers" in config:
        raise InputError(
            f"DUS needs a decoder stack: {config.get('model_type', 'this config')} is an encoder-decoder model"
        )


# Per-layer lists that are a config's only layer count: transformers derives num_hidden_layers from their length
# (Nemotron-H in transformers 5 saves layers_block_type and no count).
IMPLIED_COUNT_KEYS = ("layers_block_type",)


def with_layer_count(config: dict) -> dict:
    """The config with the layer count transformers derives made explicit, where only a per-layer list gives it
    (nested configs too: Nemotron-H's text config inside a multimodal one)."""
    config = {k: with_layer_count(v) if isinstance(v, dict) and "model_type" in v else v for k, v in config.items()}
    if any(key in config for key in LAYER_COUNT_KEYS):
        return config
    for key in IMPLIED_COUNT_KEYS:
        if isinstance(config.get(key), list) and config[key]:
            return {**config, LAYER_COUNT_KEYS[0]: len(config[key])}
    return config


def layer_count_key(config: dict) -> str:
    refuse_encoder_decoder(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return key
    raise InputError("config.json has no layer count (looked for " + ", ".join(LAYER_COUNT_KEYS) + ")")


def numbered_prefixes(names: Iterable[str]) -> dict[str, set[int]]:
    """{prefix of the first numbered name segment: the indices under it}."""
    indices: dict[str, set[int]] = defaultdict(set)
    for name in names:
        m = _FIRST_INDEX.match(name)
        if m:
            indices[m.group(1)].add(int(m.group(2)))
    return indices


def _shown(indices: dict[str, set[int]]) -> str:
    return ", ".join(f"{p}[0..{max(v)}]" for p, v in indices.items()) or "none"


def find_layer_prefix(names: Iterable[str], n: int, stack: str | None = None) -> str:
    """The prefix under which exactly layers 0..n-1 are numbered: the one named by `stack`, else the only one."""
    indices = numbered_prefixes(names)
    if stack is not None:
        return stack_prefix(indices, stack)
    matches = [p for p, found in indices.items() if found == set(range(n))]
    if len(matches) != 1:
        raise InputError(
            f"cannot find a unique stack of {n} decoder layers in the tensor names (numbered prefixes: "
            f"{_shown(indices)}){'; name one with --stack PREFIX' if len(matches) > 1 else ''}"
        )
    return matches[0]


def split_stack(stack: str) -> tuple[str, str | None]:
    """--stack PREFIX[:CONFIG] -> (PREFIX ending in '.', CONFIG or None)."""
    prefix, _, config_key = stack.partition(":")
    return (prefix if prefix.endswith(".") else prefix + "."), (config_key or None)


def stack_prefix(indices: dict[str, set[int]], stack: str) -> str:
    """--stack PREFIX, checked: a prefix of the tensor names that numbers layers 0..k-1."""
    prefix, _ = split_stack(stack)
    found = indices.get(prefix)
    if not found or found != set(range(len(found))):
        raise InputError(
            f"--stack {stack}: no stack of layers numbered 0..k-1 under that prefix (numbered prefixes: "
            f"{_shown(indices)})"
        )
    return prefix


def stack_config_key(config: dict, names: Iterable[str], stack: str | None) -> str | None:
    """Which config counts the stack's layers: None for the config itself, else the key of the nested
    config (text_config) named by --stack PREFIX:CONFIG, or else the one whose layer count equals the
    number of layers under PREFIX."""
    nested = nested_layer_counts(config)
    if stack is None:
        if nested and not any(isinstance(config.get(k), int) for k in LAYER_COUNT_KEYS):
            counts = ", ".join(f"{k}: {v} layers" for k, v in nested.items())
            raise InputError(
                f"config.json counts layers only in nested configs ({counts}; numbered prefixes: "
                f"{_shown(numbered_prefixes(names))}); name the stack to grow with --stack PREFIX"
            )
        return None
    indices = numbered_prefixes(names)
    k = len(indices[stack_prefix(indices, stack)])
    _, named = split_stack(stack)
    if named is not None:
        if nested.get(named) != k:
            raise InputError(
                f"--stack {stack}: {k} layers under the prefix, but config.json has no nested config "
                f"{named!r} counting {k} layers (nested configs: {_counts(nested)})"
            )
        return named
    if any(config.get(key) == k for key in LAYER_COUNT_KEYS if isinstance(config.get(key), int)):
        return None
    matches = [key for key, count in nested.items() if count == k]
    if len(matches) != 1:
        hint = f"; name one, e.g. --stack {stack}:{matches[0]}" if matches else ""
        raise InputError(
            f"--stack {stack}: {k} layers, but {'several' if matches else 'no'} config(s) count {k} "
            f"layers (nested configs: {_counts(nested)}){hint}"
        )
    return matches[0]


def _counts(nested: dict[str, int]) -> str:
    return ", ".join(f"{key}: {count}" for key, count in nested.items()) or "none"


def nested_layer_counts(config: dict) -> dict[str, int]:
    """{key of a nested config (text_config, vision_config, ...): its layer count}."""
    counts = {}
    for key, value in config.items():
        if isinstance(value, dict):
            count = next((value[k] for k in LAYER_COUNT_KEYS if isinstance(value.get(k), int)), None)
            if count is not None and not isinstance(count, bool):
                counts[key] = count
    return counts


# Tensors outside the stack packed one block per layer (Gemma-3n, Gemma-4 per-layer embeddings): the axis of
# the blocks (dus/plan/per_layer.py rearranges them in plan order).
PACKED = {"embed_tokens_per_layer.weight": 1, "per_layer_model_projection.weight": 0}


def packed_axis(name: str) -> int | None:
    return next((axis for suffix, axis in PACKED.items() if name.endswith(suffix)), None)


def split_layer_name(name: str, prefix: str) -> tuple[int, str] | None:
    """'model.layers.3.mlp.up_proj.weight' -> (3, 'mlp.up_proj.weight'), else None."""
    if not name.startswith(prefix):
        return None
    index, _, suffix = name[len(prefix) :].partition(".")
    return (int(index), suffix) if index.isdigit() and suffix else None


def residual_output_modules(layer_suffixes: Iterable[str]) -> tuple[str, ...]:
    """Module names (within a layer) of the attention and MLP output projections."""
    modules = {s.rsplit(".", 1)[0] for s in layer_suffixes if "." in s}
    attn = sorted(m for m in modules if _ATTN_OUT.match(m))
    mlp = sorted(m for m in modules if _MLP_OUT.match(m))
    if not attn or not mlp:
        raise InputError(
            "cannot find both residual-output projections (attention output and MLP down projection) "
            f"among this architecture's layer modules: {', '.join(sorted(modules))}"
        )
    return tuple(attn + mlp)
