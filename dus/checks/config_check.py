"""A config is untrusted input, like a safetensors header: check it before it sizes anything.

Every field dus reads or remaps is checked for type and range (the layer
count, per-layer and index lists, layer formulas, the sizes that shape
tensors) and non-finite numbers are refused, in plain Python: this runs on
the copy path, which never imports torch. The checkpoint's tensor names must
number the layers the config counts, and a plan is bounded before its layers
are expanded. What transformers itself says of a config is
dus/checks/transformers_check.py.
"""

from __future__ import annotations

import math

from dus.core.vocabulary import (
    COUNTS,
    DTYPE_KEYS,
    INDEX_LIST_KEYS,
    INDEX_LIST_SUFFIXES,
    LAST_INDEXES,
    LAYER_COUNT_KEYS,
    OFFSETS,
    PER_LAYER_KEYS,
    PERIODS,
    SIZE_KEYS,
)
from dus.errors import InputError
from dus.read.architecture import nested_layer_counts, refuse_encoder_decoder

MAX_LAYERS = 4096  # generous: published decoders have at most a few hundred layers
MAX_SIZE = 2**31 - 1  # far above any real size; a larger one overflows tensor shapes
OUTPUT = "the planned config.json"


def check_config(config: dict, where: str) -> dict:
    """Refuse a config dus cannot trust; `where` names it in the message. Returns it unchanged.
    A multimodal config counts its layers only in nested configs (text_config, vision_config):
    the one --stack names is checked by check_source, once it is known."""
    _check_json(config, where, "")
    refuse_encoder_decoder(config)
    if nested_layer_counts(config) and not any(k in config for k in LAYER_COUNT_KEYS):
        check_sizes(config, SIZE_KEYS, where)
    else:
        check_stack_config(config, where)
    model_type = config.get("model_type")
    if model_type is None:
        raise InputError(f"{where}: no model_type; transformers cannot tell which architecture it is")
    if not isinstance(model_type, str):
        raise InputError(f"{where}: model_type is {_shown(model_type)}; expected an architecture name")
    for name in DTYPE_KEYS:
        if config.get(name) not in (None, "auto") and not isinstance(config[name], str):
            raise InputError(f"{where}: {name} is {_shown(config[name])}; expected a dtype name such as bfloat16")
    return config


def check_stack_config(config: dict, where: str) -> None:
    """The fields of the config that counts a stack's layers: its count, sizes, per-layer lists, formulas."""
    key, n = _layer_count(config, where)
    check_sizes(config, SIZE_KEYS, where)
    for name, value in config.items():
        if name in PER_LAYER_KEYS or name in INDEX_LIST_KEYS:
            _check_layer_field(name, value, key, n, where)
        elif isinstance(value, list) and name not in COUNTS and _names_indices(name, value, n):
            _check_indices(name, value, key, n, where)
    _check_formulas(config, where)


def check_sizes(config: dict, names, where: str) -> None:
    """None (the class default), a positive int, or a list of them (a per-layer size)."""
    for name in names:
        value = config.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not (_is_int(item) and 0 < item <= MAX_SIZE):
                raise InputError(
                    f"{where}: {name} is {_shown(value)}; expected a positive integer (at most {MAX_SIZE:,})"
                )


def check_output_layers(count: int) -> None:
    """A plan's layer count, checked before (where it can be computed) and after expanding it."""
    if count > MAX_LAYERS:
        raise InputError(f"the plan has {count:,} layers; dus builds at most {MAX_LAYERS:,}")


def check_source(source) -> None:
    """The checkpoint's names number the layers its config counts."""
    if source.stack_config:  # a multimodal config: the nested config of the stack grown
        check_stack_config(source.layer_config, f"{source.ref}: {source.stack_config}")
    n, count = source.num_layers, len(source.tensors)
    if n > count:  # bounds the per-layer maps that finding the stack builds
        raise InputError(
            f"{source.ref}: {source.layer_key} is {n} in config.json, but the checkpoint has only {count} tensors"
        )
    source.layer_prefix  # noqa: B018 -- refuses names that do not number exactly n layers


def check_output(config: dict, num_layers: int, where: str = OUTPUT, stack_config: str | None = None) -> None:
    """The config a plan writes: the source config remapped and overridden (in its nested
    `stack_config` where the grown stack is a multimodal model's text stack)."""
    check_config(config, where)
    if stack_config:
        where = f"{where}: {stack_config}"
        if not isinstance(config.get(stack_config), dict):
            raise InputError(f"{where} is missing")
        check_stack_config(config[stack_config], where)
    key, n = _layer_count(config[stack_config] if stack_config else config, where)
    if n != num_layers:
        raise InputError(f"{where}: {key} is {n}, but the plan has {num_layers} layers")


def _shown(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _check_json(value, where: str, path: str) -> None:
    """Only what JSON can say: YAML overrides can also hold NaN, Infinity, dates, ..."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {path} is {value}; expected a finite number (JSON has no NaN or Infinity)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{where}: {path or 'the config'} has the key {key!r}; JSON keys are strings")
            _check_json(item, where, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, where, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: {path} is {_shown(value)}; expected a JSON value")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_count(config: dict, where: str) -> tuple[str, int]:
    """The first layer-count field present, as `layer_count_key` picks it, checked."""
    refuse_encoder_decoder(config)
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
    # A shorter list of 2+ entries is a repeating pattern (RecurrentGemma's block_types): the remap
    # writes it out in full, and transformers' own config check then accepts it or not.
    if len(value) > n or (len(value) < n and len(value) <= 1):
        entries = "entry" if len(value) == 1 else "entries"
        raise InputError(f"{where}: {name} has {len(value)} {entries} but {key} is {n}")
    kinds = {_kind(item) for item in value} - {"null"}
    if name.endswith(("types", "type")) and kinds - {"string"}:
        raise InputError(f"{where}: {name} holds {_first_not(value, 'string')!r}; expected layer type names (strings)")
    if "container" in kinds or len(kinds) > 1:
        raise InputError(
            f"{where}: {name} mixes {' and '.join(sorted(kinds))} entries; expected one value per layer, "
            "all of one kind"
        )


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
    return (
        name not in PER_LAYER_KEYS
        and name.endswith(INDEX_LIST_SUFFIXES)
        and len(value) != n
        and all(_is_int(v) for v in value)
    )


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
    for name in LAST_INDEXES:
        value = config.get(name)
        if value is not None and not (_is_int(value) and value >= -1):
            raise InputError(f"{where}: {name} is {_shown(value)}; expected a layer index, or -1 for the last")
