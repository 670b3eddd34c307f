"""Ask transformers whether each output layer is the layer it was copied from.

Tensor names and the config remap say what dus *writes*; what matters is what
transformers *builds* from it. Before anything is written we build the source
model and the planned output model on the meta device (configs only, no
weights) and compare every output layer i with its source layer j:

- the module tree: the class at every path;
- every parameter and buffer: name and shape;
- every plain setting in every submodule's `__dict__` (numbers, strings,
  booleans, None, dtypes, and tuples, lists and dicts of those), i.e. what
  `__init__` computed from the config and the index it was given;
- per-layer lists of the built config (length n in the source, m in the
  output), which layers may read by their index at run time.

The one rule for what may differ: a setting that records the layer's position
must follow it. That is a setting whose value is the layer's own index (an int
equal to i in the output layer and to j in the source layer), or one named
`layer_idx`, transformers' name for the KV-cache slot a module reads and writes
(LongCat-Flash gives its two attention blocks slots 2i and 2i + 1). Anything
else that differs (`lambda_init` = f(index), `layer_number` = index + 1 used as
a scale, a residual scale from the layer count, a layer kind) changes
computation.

Each difference is classified by building one more comparison, not by name:
if the output model's layer j equals the source layer j at that attribute, the
output config reproduces the source and the difference comes from the index
alone ("this architecture computes it from the layer index"); otherwise the
config remap did not reproduce the source. Setting differences of the first
kind may be accepted with `allow_index_dependent` (recorded in dus_plan.json,
the model card, and reported by `dus verify`); structural differences and
config differences are always refused.

Limits: the meta device holds no values, so a buffer whose *values* depend on
the index, and code that branches on `self.layer_idx` in `forward`, are not
seen here; scripts/architectures.py compares real logits for those.
"""

from __future__ import annotations

from dataclasses import dataclass

from dus.errors import InputError

_PLAIN = (int, float, str, bool, type(None))


@dataclass(frozen=True)
class Difference:
    output_layer: int
    source_layer: int
    what: str  # e.g. "self_attn.lambda_init 0.42 != 0.21"
    index_derived: bool  # the output config reproduces the source: only the index differs

    @property
    def reason(self) -> str:
        if self.index_derived:
            return "this architecture computes it from the layer index"
        return "the output config does not give it the source layer's value"

    def __str__(self) -> str:
        return (
            f"output layer {self.output_layer} (from source layer {self.source_layer}) would differ: "
            f"{self.what}; {self.reason}"
        )


def check_layers(
    source_config: dict,
    output_config: dict,
    source_layers: list[int],
    layer_prefix: str,
    allow_index_dependent: bool = False,
    stack_config: str | None = None,
) -> list[Difference]:
    """Refuse (InputError) unless every output layer equals its source layer; return the
    index-dependent differences accepted with allow_index_dependent."""
    found = layer_differences(source_config, output_config, source_layers, layer_prefix, stack_config)
    refused = [d for d in found if not (allow_index_dependent and d.index_derived)]
    if refused:
        more = f" ({len(found) - 1} more difference(s))" if len(found) > 1 else ""
        hint = "; pass --allow-index-dependent to build it anyway" if all(d.index_derived for d in found) else ""
        raise InputError(f"{refused[0]}{more}{hint}")
    return found


def layer_differences(
    source_config: dict,
    output_config: dict,
    source_layers: list[int],
    layer_prefix: str,
    stack_config: str | None = None,
) -> list[Difference]:
    """stack_config: the nested config (text_config) counting the stack of a multimodal model, which
    is built whole (all towers) from the whole config, as AutoModelForCausalLM builds it."""
    from dus.checks.transformers_check import meta_model
    from dus.read.architecture import layer_count_key

    src_model, out_model = meta_model(source_config), meta_model(output_config)
    counted = source_config[stack_config] if stack_config else source_config
    n = counted[layer_count_key(counted)]
    src, out = (
        _stack(src_model, layer_prefix, n, "source"),
        _stack(out_model, layer_prefix, len(source_layers), "output"),
    )
    _check_decoder(src_model.config, src)
    _check_outside(src_model, out_model, src, out)
    src_views = [module_view(layer) for layer in src]
    out_views = [module_view(layer) for layer in out]
    found = []
    for i, j in enumerate(source_layers):
        if j >= len(src):  # a layer of another, deeper source: nothing of the base to compare with
            continue
        same_index = out_views[j] if j < len(out) else None
        found += [
            Difference(i, j, what, derived)
            for what, derived in _compare(out_views[i], src_views[j], same_index, (i, j), (len(out), len(src)))
        ]
    found += _config_lists(src_model.config, out_model.config, len(src), source_layers, stack_config)
    return found


def _stack(model, prefix: str, n: int, which: str):
    """The ModuleList of n decoder layers: the module the checkpoint's layer prefix names,
    else the one ModuleList of that length."""
    import torch

    named = dict(model.named_modules())
    module = named.get(prefix.rstrip(".")) or named.get(_loaded_prefix(model, prefix))
    if isinstance(module, torch.nn.ModuleList) and len(module) == n:
        return module
    lists = [m for m in named.values() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise InputError(
            f"transformers builds {len(lists)} module lists of {n} layers from the "
            f"{which} config, not one decoder stack: cannot check the plan"
        )
    return lists[0]


def _loaded_prefix(model, prefix: str) -> str | None:
    """The module path a checkpoint's layer prefix loads into (Gemma-3 saves language_model.model.layers.N,
    which transformers 5 loads into model.language_model.layers.N)."""
    from dus.checks.transformers_check import loaded_names

    probe = f"{prefix}0.weight"
    loaded = loaded_names(model, [probe]) or {probe}
    (target,) = loaded
    return target[: -len("0.weight")].rstrip(".") if target.endswith(".0.weight") else None


def _check_decoder(config, stack) -> None:
    """Growing an encoder's or encoder-decoder's stack is not DUS: refuse both, as transformers builds them."""
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"DUS needs a decoder stack: {config.model_type} is an encoder-decoder model")
    causal = {m.is_causal for m in stack.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    if causal == {False}:
        raise InputError(
            f"DUS needs a decoder stack: transformers builds this {config.model_type} config's layers with "
            "bidirectional attention (no attention is causal): an encoder, or a prefix-LM whose prompt attends "
            "both ways"
        )


def _check_outside(src_model, out_model, src_stack, out_stack) -> None:
    """Outside the stack (embeddings, norms, heads) dus copies tensors as they are: transformers
    must build the same classes and shapes there, e.g. no per-layer embedding sized by the count
    other than those dus rearranges block by block (dus/plan/per_layer.py)."""

    def outside(model, stack):
        inside = {id(m) for m in stack.modules()}
        return module_view(model, skip=inside)

    # tensors packed by layer (per-layer embeddings) compare per layer: dus rearranges their blocks
    src = _per_layer_widths(outside(src_model, src_stack), len(src_stack))
    out = _per_layer_widths(outside(out_model, out_stack), len(out_stack))
    for what, _ in _compare(out, src, None, (-1, -1), (0, 0), settings=False):
        raise InputError(
            f"the output model would differ outside its decoder layers: {what}; "
            "the source tensor dus copies there would not fit (is it sized by the layer count?)"
        )


def _per_layer_widths(view: dict, stack_len: int) -> dict:
    """An outside-the-stack module view with packed tensors' per-layer axis divided by
    the stack's length: a source and an output of different depths then agree where dus rearranges blocks."""
    from dus.read.architecture import packed_axis

    out = {}
    for path, (cls, tensors, settings) in view.items():
        fixed = {}
        for name, shape in tensors.items():
            axis = packed_axis(f"{path}.{name}")
            if axis is not None and len(shape) > axis and shape[axis] % stack_len == 0:
                shape = tuple(d // stack_len if a == axis else d for a, d in enumerate(shape))
            fixed[name] = shape
        out[path] = (cls, fixed, settings)
    return out


def module_view(layer, skip: set[int] = frozenset()) -> dict[str, tuple]:
    """path -> (class name, {parameter/buffer: shape}, {setting: value}) for a layer's modules."""
    view = {}
    for path, module in layer.named_modules():
        if id(module) in skip:
            continue
        tensors = {
            name: tuple(t.shape)
            for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        }
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and _plain(v)}
        view[path] = (type(module).__name__, tensors, settings)
    return view


def _plain(value) -> bool:
    import torch

    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, (*_PLAIN, torch.dtype))


def _compare(
    out: dict,
    src: dict,
    out_same_index: dict | None,
    index: tuple[int, int],
    counts: tuple[int, int],
    settings: bool = True,
):
    """(description, index_derived) for each difference between output layer i and source layer j
    (index = (i, j)) of stacks of counts = (m, n) layers."""
    for path in sorted(set(out) | set(src)):
        where = path or "the layer"
        if path not in out or path not in src:
            yield f"{where} exists only in the {'source' if path in src else 'output'} layer", False
            continue
        (out_cls, out_tensors, out_settings), (src_cls, src_tensors, src_settings) = out[path], src[path]
        if out_cls != src_cls:
            yield f"{where} is {out_cls} != {src_cls}", False
            continue
        for name in sorted(set(out_tensors) | set(src_tensors)):
            if out_tensors.get(name) != src_tensors.get(name):
                yield f"{_join(path, name)} shape {out_tensors.get(name)} != {src_tensors.get(name)}", False
        if not settings:
            continue
        for name in sorted(set(out_settings) | set(src_settings)):
            a, b = out_settings.get(name, "<absent>"), src_settings.get(name, "<absent>")
            label = _join(path, name)
            if _per_layer(a, b, counts):  # a whole-stack list kept in each layer: compare its entries i and j
                a, b, label = a[index[0]], b[index[1]], f"{label}[{index[0]}]"
            if a == b or name == "layer_idx" or _records_index(a, b, *index):
                continue
            same = out_same_index is not None and path in out_same_index
            derived = same and out_same_index[path][2].get(name, "<absent>") == src_settings.get(name, "<absent>")
            yield f"{label} {_show(a)} != {_show(b)}", derived


def _per_layer(out_value, src_value, counts: tuple[int, int]) -> bool:
    return (
        counts[0] != counts[1]
        and isinstance(out_value, (list, tuple))
        and isinstance(src_value, (list, tuple))
        and (len(out_value), len(src_value)) == counts
    )


def _records_index(out_value, src_value, i: int, j: int) -> bool:
    """The value is the layer's own position: i in the output layer, j in the source layer."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (out_value, src_value))
    return ints and (out_value, src_value) == (i, j)


def _config_lists(
    src_config, out_config, n: int, source_layers: list[int], stack_config: str | None = None
) -> list[Difference]:
    """Per-layer lists of the *built* configs (transformers may derive them): entry i of the
    output must be entry j of the source."""
    m = len(source_layers)
    if n == m:
        return []
    src, out = src_config.to_dict(), out_config.to_dict()
    if stack_config and stack_config in src:  # (a causal LM class may be built from the nested config alone)
        src, out = src[stack_config], out.get(stack_config, {})
    found = []
    for name, value in src.items():
        other = out.get(name)
        every_layer = value == list(range(n)) and other == list(range(m))  # an index list naming all layers
        if (
            isinstance(value, list)
            and isinstance(other, list)
            and (len(value), len(other)) == (n, m)
            and not every_layer
        ):
            found += [
                Difference(i, j, f"config {name}[{i}] {_show(other[i])} != {_show(value[j])}", False)
                for i, j in enumerate(source_layers)
                if other[i] != value[j]
            ][:1]
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)
