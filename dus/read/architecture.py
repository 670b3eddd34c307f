"""What a checkpoint's tensor names say about its decoder stack.

Nothing here is per-model: the layer-count key comes from the config, the
stack's key prefix (`model.layers.`, `transformer.h.`, `gpt_neox.layers.`,
...) is the first numbered name segment whose indices run exactly 0..n-1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

from dus.errors import InputError

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_FIRST_INDEX = re.compile(r"^((?:[^.]+\.)*?)(\d+)\.(.+)$")

# Residual-branch output projections, zeroed to make an identity block (LLaMA-Pro).
_ATTN_OUT = re.compile(r"^(?:self_attn|attn|attention|self_attention|mixer)\.(?:o_proj|c_proj|dense|out_proj|wo)$")
_MLP_OUT = re.compile(r"^(?:mlp|feed_forward|ffn|block_sparse_moe)\.(?:.*\.)?(?:down_proj|c_proj|dense_4h_to_h|fc2|w2|fc_out)$")


def refuse_encoder_decoder(config: dict) -> None:
    if config.get("is_encoder_decoder") or "encoder_layers" in config:
        raise InputError(f"DUS needs a decoder stack: {config.get('model_type', 'this config')} is an encoder-decoder model")


def layer_count_key(config: dict) -> str:
    refuse_encoder_decoder(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return key
    raise InputError("config.json has no layer count (looked for " + ", ".join(LAYER_COUNT_KEYS) + ")")


def find_layer_prefix(names: Iterable[str], n: int) -> str:
    indices: dict[str, set[int]] = defaultdict(set)
    for name in names:
        m = _FIRST_INDEX.match(name)
        if m:
            indices[m.group(1)].add(int(m.group(2)))
    matches = [p for p, found in indices.items() if found == set(range(n))]
    if len(matches) != 1:
        seen = ", ".join(f"{p}[0..{max(v)}]" for p, v in indices.items()) or "none"
        raise InputError(f"cannot find a unique stack of {n} decoder layers in the tensor names (numbered prefixes: {seen})")
    return matches[0]


def split_layer_name(name: str, prefix: str) -> tuple[int, str] | None:
    """'model.layers.3.mlp.up_proj.weight' -> (3, 'mlp.up_proj.weight'), else None."""
    if not name.startswith(prefix):
        return None
    index, _, suffix = name[len(prefix):].partition(".")
    return (int(index), suffix) if index.isdigit() and suffix else None


def residual_output_modules(layer_suffixes: Iterable[str]) -> tuple[str, ...]:
    """Module names (within a layer) of the attention and MLP output projections."""
    modules = {s.rsplit(".", 1)[0] for s in layer_suffixes if "." in s}
    attn = sorted(m for m in modules if _ATTN_OUT.match(m))
    mlp = sorted(m for m in modules if _MLP_OUT.match(m))
    if not attn or not mlp:
        raise InputError("cannot find both residual-output projections (attention output and MLP down projection) "
                         f"among this architecture's layer modules: {', '.join(sorted(modules))}")
    return tuple(attn + mlp)
