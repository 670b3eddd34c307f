"""The in-memory reference a grown model must equal: the source's decoder layers deep-copied into plan order.

Tests and the architecture matrix (dus.testing.architectures) both compare against this one builder, so
what "exact" means is written once: transformers builds a fresh model from the output config, its decoder
stack is replaced by deep copies of the source's layers in plan order (carrying whatever each source layer
computed at construction), their KV-cache indices (`layer_idx`, `layer_id`) renumbered as transformers
numbers that position (Longcat-Flash: two attention sublayers, 2i and 2i+1), their configs the output's,
and every weight outside the stack is the source's (one sized by the layer count, one block per layer,
takes its blocks in plan order).
"""

from __future__ import annotations

import copy

CACHE_INDEX_ATTRS = ("layer_idx", "layer_id")


def reference_model(model, plan: list[int], config=None, prefix: str | None = None, source_layers: int | None = None):
    """`model` grown by `plan` (its source layer indices), built independently of dus.

    `config` is the output config (the built model's, or else `grown_config`'s); `prefix` names the
    decoder stack where a model has several (dus records it as the source's `layer_prefix`);
    `source_layers` is the source's layer count where its config names it in a field dus.runtime
    does not read."""
    import torch

    config = config if config is not None else grown_config(model.config, plan)
    ref = type(model)._from_config(copy.deepcopy(config)).to(model.dtype)
    name = stack_name(model, prefix, source_layers)
    fresh_name = stack_name(ref, prefix, source_layers and len(plan))
    fresh_stack = ref.get_submodule(fresh_name)
    source_stack = model.get_submodule(name)
    layers = torch.nn.ModuleList(copy.deepcopy(source_stack[j]) for j in plan)
    for i, layer in enumerate(layers):
        _renumber(layer, fresh_stack[i], i)
    ref.set_submodule(fresh_name, layers)
    wanted = ref.state_dict()
    outside = {
        k: _by_layer(v, tuple(wanted[k].shape), plan, len(source_stack)) if k in wanted else v
        for k, v in model.state_dict().items()
        if not k.startswith(name + ".")
    }
    ref.load_state_dict(outside, strict=False)
    return ref.eval()


def _by_layer(tensor, shape: tuple, plan: list[int], n: int):
    """A tensor outside the stack that holds one block per layer along one axis (Gemma-3n's per-layer
    embeddings: [vocab, n x D] -> [vocab, m x D]) takes its blocks in plan order; any other is unchanged."""
    import torch

    axes = [a for a, (got, want) in enumerate(zip(tensor.shape, shape)) if got != want]
    if len(tensor.shape) != len(shape) or len(axes) != 1 or tensor.shape[axes[0]] % n:
        return tensor
    axis = axes[0]
    blocks = tensor.unflatten(axis, (n, tensor.shape[axis] // n))
    return blocks.index_select(axis, torch.tensor(plan)).flatten(axis, axis + 1)


def grown_config(config, plan: list[int]):
    """The source config with its layer count and `layer_types` following the plan (its text config where nested)."""
    config = copy.deepcopy(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(text, key, None), int):
            setattr(text, key, len(plan))
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[i] for i in plan]
    return config


def _renumber(layer, fresh_layer, index: int) -> None:
    """Give a copied layer the cache indices and config transformers gives the module at `index`."""
    import transformers

    fresh = dict(fresh_layer.named_modules())
    for module_name, module in layer.named_modules():
        twin = fresh.get(module_name)
        for attr in CACHE_INDEX_ATTRS:
            if type(getattr(module, attr, None)) is int:
                want = getattr(twin, attr, None)
                setattr(module, attr, want if type(want) is int else index)
        if isinstance(getattr(module, "config", None), transformers.PreTrainedConfig) and hasattr(twin, "config"):
            module.config = twin.config


def stack_name(model, prefix: str | None = None, n: int | None = None) -> str:
    """The module path of the decoder stack: `prefix` where it names a ModuleList, else the first ModuleList
    of `n` modules, else dus.runtime's decoder_layers (the `_no_split_modules` blocks as long as the config's
    layer count)."""
    import torch

    from dus.runtime import decoder_layers

    modules = dict(model.named_modules())
    if prefix and isinstance(modules.get(prefix.rstrip(".")), torch.nn.ModuleList):
        return prefix.rstrip(".")
    if n is not None:
        return next(k for k, m in modules.items() if isinstance(m, torch.nn.ModuleList) and len(m) == n)
    stack = decoder_layers(model)
    return next(k for k, m in modules.items() if m is stack)
