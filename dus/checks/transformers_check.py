"""What transformers says of a plan's configs and checkpoints, before anything is written.

Its config class must accept each config (types, and cross-field rules such as
heads dividing the hidden size or `layer_types` naming known kinds), and the
model it builds from a config, on the meta device, must find every weight it
needs among the tensor names: after the renames, fusions and splits its loader
applies, with tied weights counted once (extra tensors are fine).

These need torch; dus/checks/run.py runs them (with the structural check of
dus/checks/equivalence.py) in a child process where the build has not loaded it.
"""

from __future__ import annotations

import re

from dus.checks.config_check import DTYPE_KEYS, SIZE_KEYS, check_sizes
from dus.errors import BuildError, InputError


def check_one(config: dict, where: str, names: list[str] | None = None, names_where: str = "") -> None:
    import transformers

    config = _decoded(config)
    if config["model_type"] not in transformers.CONFIG_MAPPING:
        raise InputError(
            f"{where}: model_type is {config['model_type']!r}, which transformers "
            f"{transformers.__version__} does not know"
        )
    aliases = transformers.CONFIG_MAPPING[config["model_type"]].attribute_map  # e.g. n_embd for hidden_size
    check_sizes(config, [aliases[k] for k in SIZE_KEYS if k in aliases], where)
    _check_dtypes(config, where)
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
    except Exception as e:  # any refusal by the config class is a bad input, told in one line
        raise InputError(f"{where}: transformers refuses this {config['model_type']} config: {reason(e)}") from None
    if names is not None:
        check_covers(_meta(hf_config, where), names, names_where)


def reason(error: Exception) -> str:
    """transformers' own words for a refusal, on one line, without exception class names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = re.sub(r"^(?:[\w.]*(?:Error|Exception|Warning):\s*)+", "", lines[-1] if lines else "")
    text = text or "it refuses the config"
    return text if len(text) <= 200 else text[:197] + "..."  # some list every model type


def _check_dtypes(config: dict, where: str) -> None:
    import torch

    for key in DTYPE_KEYS:
        value = config.get(key)
        if value not in (None, "auto") and not isinstance(getattr(torch, value, None), torch.dtype):
            raise InputError(f"{where}: {key} is {value!r}; expected a torch dtype name such as bfloat16")


def check_covers(model, names, where: str) -> None:
    """Every weight of the (meta) model must come from a tensor in `names`."""
    loaded = loaded_names(model, names)
    if loaded is None:  # unchecked is not checked: refuse rather than build a model that may lack weights
        import transformers

        raise BuildError(
            f"transformers {transformers.__version__} lacks the weight conversion mapping dus "
            "reads (dus/private_api.py): cannot check that the checkpoint holds every weight; "
            "install a transformers within the bounds of dus's pyproject.toml"
        )
    from dus.private_api import ignored_when_missing

    ignored = ignored_when_missing(model)
    tied: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    missing = [
        group[0]
        for group in tied.values()
        if not loaded.intersection(group) and not any(re.search(p, group[0]) for p in ignored)
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{where} has no tensor for {missing[0]!r}{more}, which {type(model).__name__} needs")


def _decoded(config: dict) -> dict:
    """The config as from_pretrained reads it: config.json spells inf and nan as
    {"__float__": "Infinity"} (the only way JSON can), and transformers decodes them."""
    from dus.private_api import decode_special_floats

    return decode_special_floats({k: v for k, v in config.items() if k != "quantization_config"})


def meta_model(config: dict, where: str = "config.json"):
    """The weightless (meta-device) causal LM transformers builds from a config dict."""
    import transformers

    config = _decoded(config)
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
    except Exception as e:  # any refusal by the config class is a bad input, told in one line
        raise InputError(f"{where}: transformers refuses this config: {reason(e)}") from None
    return _meta(hf_config, where)


def _meta(hf_config, where: str):
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # A multimodal model that is no causal LM (Llava, Qwen2-VL, PaliGemma) is built as image-text-to-text;
    # `--stack` grows its language model
    causal = hf_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForImageTextToText
    try:
        with torch.device("meta"):
            return auto.from_config(hf_config)
    except Exception as e:  # transformers raises many kinds (ValueError, KeyError, AttributeError, ImportError...)
        raise InputError(f"{where}: transformers cannot build a causal LM from its config ({reason(e)})") from None


def loaded_names(model, names) -> set[str] | None:
    """The model parameters that checkpoint tensors `names` load into, as from_pretrained maps them;
    None where this transformers lacks the loading conversions (dus/private_api.py)."""
    from dus.private_api import weight_conversions

    conversions = weight_conversions(model)
    if conversions is None:
        return None
    renamings, converters, rename_source_key = conversions
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
