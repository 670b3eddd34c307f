"""Every use dus makes of torch and transformers internals, in one place.

Neither library offers these publicly. torch.distributed.checkpoint (DCP) keeps
its nested-state flattening and element setting, which its own planner uses to
key `.metadata`, in private modules, and names the storage entries of a
`.metadata` pickle with a private class. transformers' renames, fusions and
splits of checkpoint names on loading (`conversion_mapping`,
`core_model_loading`), its decoding of special floats in config.json, and the
model attributes naming the weights it may leave missing and the blocks it
never splits are internals of `from_pretrained` and of accelerate's wrapping. pyproject.toml bounds
both dependencies to the versions these were checked against, and
tests/test_private_api.py checks that no other module reaches for them and that
they still behave as dus relies on; a new torch or transformers is admitted by
raising the bound once those tests pass with it.
"""

from __future__ import annotations

# How a DCP `.metadata` pickle names the class of its storage entries (the unpickler admits it).
DCP_STORAGE_INFO = ("torch.distributed.checkpoint.filesystem", "_StorageInfo")


def dcp_flatten(state: dict) -> dict:
    """{fully qualified name: value} of a nested state dict, the keys DCP stores in `.metadata`."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    return flatten_state_dict(state)[0]


def dcp_set_element(root: dict, path, value) -> None:
    """Put `value` at `path` (a DCP load planner's mapping of a flattened name) in the nested `root`."""
    from torch.distributed.checkpoint._traverse import set_element

    set_element(root, path, value)


def dcp_storage_info() -> type:
    """The class of `.metadata`'s storage entries (file, offset, length of each stored item)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    return _StorageInfo


def weight_conversions(model):
    """(renamings, converters, rename_source_key) that from_pretrained applies to a checkpoint's tensor
    names for `model`; None where this transformers does not have them."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    return renamings, converters, rename_source_key


def decode_special_floats(config: dict) -> dict:
    """config.json as from_pretrained reads it: {"__float__": "Infinity"} (the only way JSON can spell
    inf and nan) decoded to floats."""
    import transformers

    return transformers.PreTrainedConfig._decode_special_floats(config)


def ignored_when_missing(model) -> tuple[str, ...]:
    """Patterns of the weights from_pretrained lets a checkpoint leave out (initialised instead)."""
    return tuple(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())


def unsplit_blocks(model) -> set[str]:
    """Class names of the blocks a model says must not be split (its decoder layers, for most)."""
    return set(getattr(model, "_no_split_modules", None) or ())


def attention_implementation(config) -> str | None:
    """The attention implementation a loaded model was built with ("sdpa", "eager", ...), if it says."""
    return getattr(config, "_attn_implementation", None)
