"""A config is untrusted input, like a safetensors header: check it before it sizes anything.

Every field dus reads or remaps is checked for type and range (the layer
count, per-layer and index lists, layer formulas, the sizes that shape
tensors), non-finite numbers are refused, and transformers' own config class
must accept the whole config. Then the checkpoint must agree with it: the
tensor names must number the layers the config counts, and hold every weight
the architecture builds. A plan is bounded before its layers are expanded.
"""

from __future__ import annotations

import math
import re

from dus.errors import InputError
from dus.plan.config import INDEX_LIST_KEYS, INDEX_LIST_SUFFIXES, LAYER_FORMULAS, PER_LAYER_KEYS
from dus.read.architecture import LAYER_COUNT_KEYS

MAX_LAYERS = 4096  # generous: published decoders have at most a few hundred layers
# Sizes that shape tensors (transformers' standard names; a config class may alias them).
SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_position_embeddings")
# The fields of LAYER_FORMULAS (and Gemma's sliding-window pattern): what each must be.
PERIODS = ("attn_layer_period", "expert_layer_period", "decoder_sparse_step", "moe_layer_freq", "sliding_window_pattern")
OFFSETS = {"attn_layer_offset": "attn_layer_period", "expert_layer_offset": "expert_layer_period"}
COUNTS = ("first_k_dense_replace", "max_window_layers")
DTYPE_KEYS = ("dtype", "torch_dtype")
MAX_SIZE = 2**31 - 1  # far above any real size; a larger one overflows tensor shapes


def check_config(config: dict, where: str) -> dict:
    """Refuse a config dus cannot trust; `where` names it in the message. Returns it unchanged."""
    _check_finite(config, where, "")
    key, n = _layer_count(config, where)
    model_type = config.get("model_type")
    aliases = _config_class(model_type, where).attribute_map
    for name in SIZE_KEYS:
        for field in dict.fromkeys((name, aliases.get(name, name))):
            _check_size(config.get(field), where, field)
    for name, value in config.items():
        if name in PER_LAYER_KEYS or name in INDEX_LIST_KEYS:
            _check_layer_field(name, value, key, n, where)
        elif isinstance(value, list) and name not in COUNTS and _names_indices(name, value, n):
            _check_indices(name, value, key, n, where)
    _check_formulas(config, where)
    for name in DTYPE_KEYS:
        _check_dtype(config.get(name), where, name)
    _check_with_transformers(config, where)
    return config


def check_output_layers(count: int) -> None:
    """A plan's layer count, checked before (where it can be computed) and after expanding it."""
    if count > MAX_LAYERS:
        raise InputError(f"the plan has {count:,} layers; dus builds at most {MAX_LAYERS:,}")


def _shown(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _check_finite(value, where: str, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {path} is {value}; expected a finite number (JSON has no NaN or Infinity)")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, where, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, where, f"{path}[{i}]")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_count(config: dict, where: str) -> tuple[str, int]:
    """The first layer-count field present, as `layer_count_key` picks it, checked."""
    for key in LAYER_COUNT_KEYS:
        n = config.get(key)
        if n is None:
            continue
        if not _is_int(n) or n < 1:
            raise InputError(f"{where}: {key} is {_shown(n)}; expected a positive integer")
        if n > MAX_LAYERS:
            raise InputError(f"{where}: {key} is {n:,}; dus handles at most {MAX_LAYERS:,} layers")
        return key, n
    raise InputError(f"{where}: no layer count (looked for {', '.join(LAYER_COUNT_KEYS)})")


def _config_class(model_type, where: str):
    from transformers import CONFIG_MAPPING

    if model_type is None:
        raise InputError(f"{where}: no model_type; transformers cannot tell which architecture it is")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        import transformers

        raise InputError(f"{where}: model_type is {model_type!r}, which transformers {transformers.__version__} "
                         "does not know")
    return CONFIG_MAPPING[model_type]


def _check_size(value, where: str, field: str) -> None:
    """None (the class default), a positive int, or a list of them (a per-layer size)."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is not None and not (_is_int(item) and 0 < item <= MAX_SIZE):
            raise InputError(f"{where}: {field} is {_shown(value)}; expected a positive integer "
                             f"(at most {MAX_SIZE:,})")


def _check_dtype(value, where: str, field: str) -> None:
    import torch

    if value not in (None, "auto") and not (isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype)):
        raise InputError(f"{where}: {field} is {_shown(value)}; expected a torch dtype name such as bfloat16")


def _check_layer_field(name: str, value, key: str, n: int, where: str) -> None:
    if value is None:
        return
    if name in INDEX_LIST_KEYS:
        if not isinstance(value, list):
            raise InputError(f"{where}: {name} is {_shown(value)}; expected a list of layer indices")
        _check_indices(name, value, key, n, where)
        return
    if not isinstance(value, list):
        if "layer" in name or "type" in name:  # names that only ever mean one entry per layer
            raise InputError(f"{where}: {name} is {_shown(value)}; expected a list of {n} entries, one per layer")
        return
    if len(value) != n:
        entries = "entry" if len(value) == 1 else "entries"
        raise InputError(f"{where}: {name} has {len(value)} {entries} but {key} is {n}")
    kinds = {_kind(item) for item in value} - {"null"}
    if name.endswith(("types", "type")) and kinds - {"string"}:
        raise InputError(f"{where}: {name} holds {_first_not(value, 'string')!r}; expected layer type names (strings)")
    if "container" in kinds or len(kinds) > 1:
        raise InputError(f"{where}: {name} mixes {' and '.join(sorted(kinds))} entries; expected one value per layer, "
                         "all of one kind")


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bool, int, float)):
        return "number"
    return "container"


def _first_not(values: list, kind: str):
    return next(v for v in values if _kind(v) not in (kind, "null"))


def _names_indices(name: str, value: list, n: int) -> bool:
    """A list the remapper would take for layer indices if they were in range."""
    return (name not in PER_LAYER_KEYS and name.endswith(INDEX_LIST_SUFFIXES) and len(value) != n
            and all(_is_int(v) for v in value))


def _check_indices(name: str, value: list, key: str, n: int, where: str) -> None:
    for item in value:
        if not _is_int(item):
            raise InputError(f"{where}: {name} holds {_shown(item)}; expected layer indices (integers)")
        if not 0 <= item < n:
            raise InputError(f"{where}: {name} holds layer {item}, but {key} is {n} (layers 0..{n - 1})")


def _check_formulas(config: dict, where: str) -> None:
    for name in PERIODS:
        value = config.get(name)
        if value is not None and not (_is_int(value) and value > 0):
            raise InputError(f"{where}: {name} is {_shown(value)}; expected a positive integer")
    for name, period_name in OFFSETS.items():
        value, period = config.get(name), config.get(period_name)
        if value is not None and not (_is_int(value) and 0 <= value < (period or value + 1)):
            within = f"in 0..{period - 1} ({period_name} is {period})" if period else "that is not negative"
            raise InputError(f"{where}: {name} is {_shown(value)}; expected an integer {within}")
    for name in COUNTS:
        value = config.get(name)
        if value is not None and not (_is_int(value) and value >= 0):
            raise InputError(f"{where}: {name} is {_shown(value)}; expected a non-negative integer")


def _check_with_transformers(config: dict, where: str):
    """transformers' config class validates types and cross-field rules (heads divide
    the hidden size, layer_types names and length, ...); its refusal is ours."""
    import transformers

    config = {k: v for k, v in config.items() if k != "quantization_config"}
    try:
        return transformers.AutoConfig.for_model(**config)
    except Exception as e:  # any refusal by the config class is a bad input, told in one line
        detail = str(e).strip().splitlines()[-1].strip() or e.__class__.__name__
        raise InputError(f"{where}: transformers refuses this {config['model_type']} config: {detail}") from None


def check_source(source) -> None:
    """The checkpoint agrees with its config: its names number the layers the config
    counts, and it holds every weight the architecture builds."""
    n, count = source.num_layers, len(source.tensors)
    if n > count:  # bounds the per-layer maps that finding the stack builds
        raise InputError(f"{source.ref}: {source.layer_key} is {n} in config.json, but the checkpoint has only "
                         f"{count} tensors")
    source.layer_prefix  # noqa: B018 -- refuses names that do not number exactly n layers
    if source.has_weights:
        check_covers(source.config, source.tensors, f"{source.ref}: the checkpoint")


def check_output(config: dict, num_layers: int, names, where: str = "the planned config.json") -> None:
    """The config a plan writes (source config, remapped and overridden) and its tensors."""
    key, n = _layer_count(check_config(config, where), where)
    if n != num_layers:
        raise InputError(f"{where}: {key} is {n}, but the plan has {num_layers} layers")
    check_covers(config, names, f"{where}: the planned tensors")


def check_covers(config: dict, names, where: str) -> None:
    """Every weight transformers builds from `config` must come from a tensor in `names`
    (after the renames and fusions transformers applies on load; either of two tied weights)."""
    model = _meta_model(config, where)
    loaded = _loaded_names(model, names)
    if loaded is None:  # a transformers without the loading conversions: nothing to compare by name
        return
    ignored = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
    tied: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    missing = [group[0] for group in tied.values()
               if not loaded.intersection(group) and not any(re.search(p, group[0]) for p in ignored)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{where} has no tensor for {missing[0]!r}{more}, which {type(model).__name__} needs")


def _meta_model(config: dict, where: str):
    import torch
    import transformers

    config = {k: v for k, v in config.items() if k != "quantization_config"}
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(hf_config)
    except Exception as e:  # checked configs reach here; any refusal left is one line
        detail = " ".join(f"{e.__class__.__name__}: {e}".split())
        raise InputError(f"{where}: transformers cannot build a causal LM from this config ({detail})") from None


def _loaded_names(model, names) -> set[str] | None:
    """The model parameters that checkpoint tensors `names` load into, as from_pretrained maps them."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = set()
    for name in names:
        target, pattern = rename_source_key(name, renamings, converters, model.base_model_prefix, params)
        if target not in params and name in params:  # as from_pretrained: only the prefix may change
            target, pattern = rename_source_key(name, [], [], model.base_model_prefix, params)
        loaded.add(target)
        if pattern is not None:  # a split (qkv -> q, k, v) is named by its first target; add the others
            first, *others = by_pattern[pattern].target_patterns
            head, _, tail = target.rpartition(first)
            loaded.update(f"{head}{other}{tail}" for other in others if head or tail)
    return loaded
