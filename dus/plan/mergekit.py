"""mergekit passthrough recipes: read one as a dus plan, and write a dus plan as one.

A mergekit passthrough recipe (`merge_method: passthrough`) is a layer stack: `slices`, each taking the
`layer_range` [start, stop) of one source `model`, optionally multiplying tensors by `parameters: scale`.
That is a dus plan, so the same YAML builds here with a `dus_plan.json` that `dus verify` proves.
Anything else (slerp, ties, linear, ...) averages weights: mergekit does merges, dus refuses them.

What dus follows from mergekit (its `plan.py` and `config.py`, version 0.1.5):
- the embeddings come from the first slice's model and the final norm and head from the last slice's;
  dus takes every tensor outside the layers from one model, so both must be the same (refused otherwise);
- a parameter is looked up on the slice's source, then the slice, then the recipe's top level; a list of
  `{filter, value}` entries gives the first value whose filter is absent, "*", or a substring of the
  input tensor's full name (e.g. `model.layers.5.self_attn.o_proj.weight`);
- passthrough multiplies a tensor by its `scale` (0 zeroes it) and ignores every other parameter;
- a `models:` list of one model passes that whole model through (one slice of all its layers).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError
from dus.plan.model import Edit, LayerRef, OutputLayer, Plan
from dus.read.architecture import packed_axis, split_layer_name
from dus.read.source import Source

# mergekit's MergeConfiguration fields; dus reads those in READ, and refuses or ignores the rest below.
MERGEKIT_KEYS = {
    "merge_method",
    "slices",
    "models",
    "modules",
    "base_model",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "parameters",
}
READ = {"merge_method", "slices", "models", "base_model", "dtype", "out_dtype", "tokenizer_source", "parameters"}
SLICE_KEYS, SOURCE_KEYS = (
    {"sources", "base_model", "residual_weight", "parameters"},
    {"model", "layer_range", "parameters"},
)


def is_mergekit(data: dict) -> bool:
    """A YAML mapping written for mergekit rather than as a dus recipe."""
    return "merge_method" in data or "slices" in data or "models" in data


def yaml_source(source: str | None) -> bool:
    """SOURCE names a YAML recipe file (`dus plan merge.yml`) rather than a model."""
    return bool(source) and str(source).endswith((".yml", ".yaml")) and Path(source).is_file()


@dataclass(frozen=True)
class Slice:
    model: str  # the dus source name
    start: int
    stop: int
    scale: tuple  # the `scale` settings in lookup order: source, slice, top level (None where absent)


@dataclass(frozen=True)
class MergekitLayers:
    """A recipe's slices, made into output layers once the sources are open (filters match tensor names)."""

    path: str
    slices: tuple[Slice, ...]

    def output_layers(self, sources: dict[str, Source]) -> list[OutputLayer]:
        _check_outside_layers(self, sources)
        layers = []
        for number, piece in enumerate(self.slices, 1):
            source = sources[piece.model]
            if piece.stop == -1:  # `models:`: the whole model
                piece = Slice(piece.model, 0, source.num_layers, piece.scale)
            if not (0 <= piece.start < piece.stop <= source.num_layers):
                raise InputError(
                    f"{self.path}: slice {number}: layer_range [{piece.start}, {piece.stop}] is outside "
                    f"{source.ref}'s {source.num_layers} layers (valid: 0 <= start < stop <= "
                    f"{source.num_layers})"
                )
            for index in range(piece.start, piece.stop):
                edits = _edits(piece.scale, source.layer_tensors[index])
                layers.append(OutputLayer((LayerRef(index, piece.model),), edits, bool(edits)))
        return layers


def recipe_options(data: dict, path: str | Path) -> dict:
    """A mergekit recipe as dus recipe options: its sources, its slices as the layer list, its dtype."""
    path = str(path)
    _check_method(data, path)
    _warn_unknown(data, path)
    slices = _slices(data, path)
    models = []
    for model, *_ in slices:
        if model not in models:
            models.append(model)
    names = _source_names(models)
    _check_one_model_outside_layers(data, slices, path)
    top = (data.get("parameters") or {}).get("scale")
    options = {
        "sources": {names[m]: m for m in models},
        "recipe": "layers",
        "layers": MergekitLayers(
            path, tuple(Slice(names[m], start, stop, (*scale, top)) for m, start, stop, scale in slices)
        ),
    }
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype:
        options["dtype"] = str(dtype)
    return options


def _check_method(data: dict, path: str) -> None:
    method = data.get("merge_method")
    if method is None:
        raise InputError(f"{path}: no merge_method (a mergekit recipe dus builds says `merge_method: passthrough`)")
    if method != "passthrough":
        raise InputError(
            f"{path}: merge_method {method!r} merges weights, which mergekit does; dus builds "
            "passthrough recipes (layer stacks) only"
        )
    if data.get("modules"):
        raise InputError(f"{path}: per-module recipes (modules:) are not supported; use slices")
    if data.get("tokenizer"):
        raise InputError(
            f"{path}: a tokenizer: section builds a new vocabulary (a merge of embeddings); dus copies "
            "the tokenizer of the first slice's model"
        )


def _warn_unknown(data: dict, path: str) -> None:
    """Warn once, listing every key dus does not apply (mergekit's own extras included)."""
    ignored = sorted(set(data) - READ)
    for piece in data.get("slices") or []:
        if isinstance(piece, dict):
            ignored += [f"slices.{k}" for k in sorted(set(piece) - SLICE_KEYS)]
            ignored += [
                f"slices.sources.{k}"
                for s in piece.get("sources") or []
                if isinstance(s, dict)
                for k in sorted(set(s) - SOURCE_KEYS)
            ]
    params = [f"parameters.{k}" for p in _all_parameters(data) for k in sorted(p) if k != "scale"]
    ignored = list(dict.fromkeys(ignored + params))
    if ignored:
        print(
            f"warning: {path}: ignoring keys dus does not apply to a passthrough: {', '.join(ignored)}", file=sys.stderr
        )


def _all_parameters(data: dict) -> list[dict]:
    found = [data.get("parameters")]
    for piece in data.get("slices") or []:
        if isinstance(piece, dict):
            found.append(piece.get("parameters"))
            found += [s.get("parameters") for s in piece.get("sources") or [] if isinstance(s, dict)]
    found += [m.get("parameters") for m in data.get("models") or [] if isinstance(m, dict)]
    return [p for p in found if isinstance(p, dict)]


def _slices(data: dict, path: str) -> list[tuple[str, int, int, tuple]]:
    """(model, start, stop, (source scale, slice scale)) per slice; `models:` of one model is one slice."""
    if data.get("slices") and data.get("models"):
        raise InputError(f"{path}: give slices or models, not both")
    if data.get("models"):
        models = data["models"]
        if not isinstance(models, list) or len(models) != 1:
            count = len(models) if isinstance(models, list) else "not a list of"
            raise InputError(
                f"{path}: models: lists {count} models; a passthrough takes one (a list of several "
                "is a merge, which mergekit does)"
            )
        entry = _mapping(models[0], f"{path}: models[0]")
        return [(_model(entry, path), 0, -1, (_scale(entry), None))]
    pieces = data.get("slices")
    if not isinstance(pieces, list) or not pieces:
        raise InputError(f"{path}: slices must be a non-empty list of {{sources: [{{model, layer_range}}]}}")
    return [_slice(piece, number, path) for number, piece in enumerate(pieces, 1)]


def _slice(piece, number: int, path: str) -> tuple[str, int, int, tuple]:
    where = f"{path}: slice {number}"
    piece = _mapping(piece, where)
    sources = piece.get("sources")
    if not isinstance(sources, list) or len(sources) != 1:
        count = len(sources) if isinstance(sources, list) else "no list of"
        raise InputError(f"{where}: has {count} sources; a passthrough slice takes exactly one (several are a merge)")
    source = _mapping(sources[0], where)
    span = source.get("layer_range")
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(type(v) is int for v in span)
        or not 0 <= span[0] < span[1]
    ):
        raise InputError(f"{where}: layer_range must be [start, stop] with 0 <= start < stop, got {span!r}")
    return _model(source, where), span[0], span[1], (_scale(source), _scale(piece))


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: must be a mapping, got {value!r}")
    return value


def _model(entry: dict, where: str) -> str:
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise InputError(f"{where}: needs model: a model directory or Hub repo id")
    if "+" in model:
        raise InputError(f"{where}: {model!r} applies a LoRA (model+lora), a merge of weights; give a merged model")
    return model


def _scale(entry: dict):
    params = entry.get("parameters") or {}
    return params.get("scale") if isinstance(params, dict) else None


def _source_names(models: list[str]) -> dict[str, str]:
    """The first model is dus's `base`; the others are named by their last path part."""
    names = {models[0]: "base"}
    for model in models[1:]:
        name = Path(model.rstrip("/")).name or "model"
        while name in names.values():
            name += "_"
        names[model] = name
    return names


def _check_one_model_outside_layers(data: dict, slices: list, path: str) -> None:
    first, last = slices[0][0], slices[-1][0]
    if first != last:
        raise InputError(
            f"{path}: mergekit takes the embeddings from the first slice's model ({first}) and the "
            f"final norm and head from the last slice's ({last}); dus takes every tensor outside the "
            "layers from one model: end with a slice of the first model"
        )
    for key in ("base_model", "tokenizer_source"):
        value = data.get(key)
        if value not in (None, first) and not (
            key == "tokenizer_source" and value == "base" and data.get("base_model") in (None, first)
        ):
            raise InputError(
                f"{path}: {key} {value!r} is not the first slice's model ({first}): dus takes the config "
                "and tokenizer from the model the embeddings come from"
            )


def _setting(settings: tuple, tensor_name: str):
    """mergekit's value of a parameter for one tensor: the first setting that gives one."""
    for setting in settings:
        value = _evaluate(setting, tensor_name)
        if value is not None:
            return value
    return None


def _evaluate(setting, tensor_name: str):
    if setting is None or isinstance(setting, bool):
        return None if setting is None else float(setting)
    if isinstance(setting, (int, float)):
        return float(setting)
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and all(isinstance(e, dict) for e in setting):
        for entry in setting:
            condition = entry.get("filter")
            if condition is None or condition == "*" or condition in tensor_name:
                return _evaluate(entry.get("value"), tensor_name)
        return None
    raise InputError(
        f"scale {setting!r}: dus reads one number, or a list of {{filter, value}} with one number each "
        "(gradients, lists of values along a slice, are not supported)"
    )


def _edits(scale: tuple, layer_tensors: dict[str, str]) -> tuple[Edit, ...]:
    """A layer's scale settings as dus edits: the tensors (by suffix) each factor applies to."""
    by_factor: dict[float, list[str]] = {}
    for suffix, name in layer_tensors.items():
        factor = _setting(scale, name)
        if factor is not None and factor != 1.0:
            by_factor.setdefault(factor, []).append(suffix)
    return tuple(Edit("zero" if f == 0.0 else "scale", tuple(s), f) for f, s in by_factor.items())


def _check_outside_layers(layers: MergekitLayers, sources: dict[str, Source]) -> None:
    """mergekit scales the embeddings and head too (by the first and last slice's settings): dus does not."""
    base = sources[layers.slices[0].model]
    for name in base.tensors:
        if split_layer_name(name, base.layer_prefix) is None:
            for piece in (layers.slices[0], layers.slices[-1]):
                factor = _setting(piece.scale, name)
                if factor not in (None, 1.0):
                    raise InputError(
                        f"{layers.path}: scale {factor:g} applies to {name}, outside the layers; dus "
                        "scales layer tensors only (add a filter that names them)"
                    )


# The reverse: a plan as mergekit passthrough YAML.


def to_mergekit_yaml(plan: Plan, sources: dict[str, Source]) -> str:
    """The plan as a mergekit passthrough recipe, or InputError saying why it has none."""
    import yaml

    _check_expressible(plan, sources)
    slices = []
    for run in _runs(plan):
        layer = run[0]
        source = {"model": plan.sources[layer.source], "layer_range": [layer.source_layer, run[-1].source_layer + 1]}
        scale = _scale_setting(layer, sources[layer.source])
        if scale:
            source["parameters"] = {"scale": scale}
        slices.append({"sources": [source]})
    recipe = {"slices": slices, "merge_method": "passthrough"}
    if plan.dtype != "auto":
        recipe["dtype"] = plan.dtype
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)


def _check_expressible(plan: Plan, sources: dict[str, Source]) -> None:
    base = sources[plan.base]
    why = None
    if plan.recipe.get("init", {}).get("layers"):  # before the blend check: such a layer lists its two sources
        why = f"its new layers are computed (--init {plan.recipe['init'].get('name')})"
    elif any(len(layer.inputs) > 1 for layer in plan.layers):
        why = "it blends layers (a weighted average is a merge, not a passthrough)"
    elif plan.config_overrides:
        why = "it overrides config fields, which a mergekit recipe cannot"
    elif plan.recipe.get("width"):
        why = "it grows the width (--width, --mlp-width: computed tensors)"
    elif plan.moe:
        why = "it upcycles the MLPs into experts (--experts)"
    elif any(packed_axis(name) is not None for name in base.tensors):
        why = "its per-layer embeddings are rearranged block by block (mergekit copies them as they are)"
    elif base.stack:
        why = "it grows one stack of a multimodal checkpoint (--stack)"
    elif base.ref.endswith(".gguf"):
        why = "its source is a GGUF file (mergekit reads safetensors checkpoints)"
    if why:
        raise InputError(f"this plan has no mergekit passthrough recipe: {why}")


def _runs(plan: Plan) -> list[list[OutputLayer]]:
    """Consecutive output layers taking consecutive layers of one source with the same edits: one slice each."""
    runs: list[list[OutputLayer]] = []
    for layer in plan.layers:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last.source == layer.source
            and last.edits == layer.edits
            and last.source_layer + 1 == layer.source_layer
        ):
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def _scale_setting(layer: OutputLayer, source: Source) -> list[dict]:
    """The layer's edits as mergekit `{filter, value}` entries, checked to give each tensor dus's factor."""
    if not layer.edits:
        return []
    tensors = source.layer_tensors[layer.source_layer]
    entries = [
        {"filter": f".{module}" + ("" if module in tensors else "."), "value": edit.factor}
        for edit in layer.edits
        for module in edit.modules
    ]
    entries.append({"value": 1.0})
    for suffix, name in tensors.items():
        want = 1.0
        for edit in layer.edits:
            if edit.matches(suffix):
                want *= edit.factor
        if _setting((entries,), name) != want:
            raise InputError(
                f"this plan has no mergekit passthrough recipe: its edits of layer {layer.source_layer} "
                f"cannot be told apart by tensor-name filters ({suffix})"
            )
    return entries
