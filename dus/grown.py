"""A grown model in memory whose repeated layers share the source's parameters.

    model = dus.load_grown("HuggingFaceTB/SmolLM2-135M", "0:22,8:30")

`dus build` would write the planned model; this builds the same model in the
process, with no extra weight memory: the plan and its config come from
`dus.plan` (the same remapped config.json `dus build` writes, checked by
transformers the same way), transformers builds the planned model from that
config through `from_pretrained` (so every module, buffer and `layer_idx` is
what loading the built directory makes: each position owns its KV-cache slot),
and then every parameter of output layer i is replaced by the *Parameter
object* of its source layer j. One tensor per source weight: the model's
unique parameter bytes equal the source's.

Kept: logits and cached greedy generation are bit-identical to the built
model's loaded with AutoModelForCausalLM (tests/test_grown.py). Refused, with
the reason: GGUF sources, and plans whose layers are computed (zeroed, scaled,
blended, from a second source), which a shared tensor cannot represent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dus.errors import InputError


def load_grown(source: str, layers, *, device: str = "auto", dtype: str = "auto", **plan_options):
    """The transformers model of plan `layers` over `source`, its layers sharing the source's parameters."""
    from dus.api import plan as make_plan

    if str(source).endswith(".gguf"):
        raise InputError("load_grown needs a safetensors source: a GGUF's tensors are quantized")
    resolved = make_plan(source, layers=layers, **plan_options)
    source_layers = shared_layers(resolved.plan)
    return grown_model(source, resolved.config, source_layers, device=device, dtype=dtype)


def shared_layers(plan) -> list[int]:
    """The source layer of each output layer, or InputError when a layer is not a plain copy of the base."""
    for i, layer in enumerate(plan.layers):
        if layer.op != "copy" or layer.source != plan.base:
            what = layer.op if layer.op != "copy" else f"a copy from source {layer.source!r}"
            raise InputError(
                f"output layer {i} is {what}: load_grown shares the base model's tensors and cannot "
                "represent a computed layer; build it with `dus build`"
            )
    return [layer.source_layer for layer in plan.layers]


def grown_model(source: str, config: dict, source_layers: list[int], *, device: str = "auto", dtype: str = "auto"):
    """Build the model of `config` (a planned config.json) and share `source`'s parameters into it."""
    from dus.runtime import load_model

    base, device = load_model(source, device, dtype)
    model = _construct(config, base, source_layers)
    share_parameters(base, model, source_layers)
    model.config._name_or_path = str(source)  # where its tensors live
    return model.to(device).eval()


def _construct(config: dict, base, source_layers: list[int]):
    """from_pretrained of the planned config fed the base model's tensors under the planned names, so
    buffers and settings are made exactly as loading the built directory makes them."""
    import json

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        hf_config = AutoConfig.from_pretrained(tmp)
    prefix = layer_path(base) + "."
    state, by_layer = {}, {}
    for name, tensor in base.state_dict().items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix) :].partition(".")
            by_layer.setdefault(int(index), {})[rest] = tensor
        else:
            state[name] = tensor
    for i, j in enumerate(source_layers):
        state.update({f"{prefix}{i}.{rest}": tensor for rest, tensor in by_layer[j].items()})
    kwargs = {"dtype": base.dtype}
    from dus.private_api import attention_implementation

    attention = attention_implementation(base.config)
    if attention:
        kwargs["attn_implementation"] = attention
    return type(base).from_pretrained(None, config=hf_config, state_dict=state, **kwargs)  # the class loading picks


def share_parameters(base, model, source_layers: list[int]) -> None:
    """Point every parameter of `model` at the base's Parameter object it copies: output layer i's at
    source layer source_layers[i]'s, everything outside the stack at the same name's."""
    base_params = dict(base.named_parameters(remove_duplicate=False))
    prefix = layer_path(model) + "."
    if layer_path(base) + "." != prefix or len(_layers_of(model)) != len(source_layers):
        raise InputError("the planned model's decoder stack is not where the source's is: cannot share its tensors")
    for name, _ in list(model.named_parameters(remove_duplicate=False)):
        source_name = name
        if name.startswith(prefix):
            index, _, rest = name[len(prefix) :].partition(".")
            source_name = f"{prefix}{source_layers[int(index)]}.{rest}"
        if source_name not in base_params:
            raise InputError(f"the source model has no parameter {source_name!r} for {name!r}")
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, base_params[source_name])


def layer_path(model) -> str:
    """The module path of the decoder stack (e.g. model.layers)."""
    layers = _layers_of(model)
    return next(name for name, module in model.named_modules() if module is layers)


def _layers_of(model):
    from dus.runtime import decoder_layers

    return decoder_layers(model)


def parameter_bytes(model) -> int:
    """Bytes of the distinct storages behind a model's parameters (a shared tensor counts once)."""
    seen = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        storage = p.untyped_storage()
        seen[(p.device, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
