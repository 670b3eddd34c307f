"""Turn the plan options (dus/plan/options.py: flags, a preset, a recipe file) into a Plan."""

from __future__ import annotations

from dus.checks.config_check import check_output_layers
from dus.errors import InputError
from dus.plan import insert, recipes
from dus.plan.mergekit import MergekitLayers
from dus.plan.model import Edit, LayerRef, OutputLayer, Plan, copy_of
from dus.plan.moe_family import EXPERT_OPTIONS
from dus.plan.options import PlanOptions
from dus.plan.recipe_options import RECIPE_PARAMS, recipe_name
from dus.plan.width import width_options
from dus.read.architecture import residual_output_modules
from dus.read.source import Source
from dus.runtime import dtype_name


def make_plan(sources: dict[str, Source], options: PlanOptions) -> Plan:
    base = sources[next(iter(sources))]
    n = base.num_layers
    width = width_options(options)  # checked first: a bad factor is the error to report
    recipe = recipe_name(options.recipe, options.layers, options.insert_at)
    given = {key: getattr(options, key) for key in ("overlap", "layers", "factor", "group", "new_layers")}
    if _width_only(options):  # `--width 2` alone keeps the depth
        recipe, given["layers"] = "layers", f"0:{n}"
    init, insert_at = insert.check_init(options.init), options.insert_at
    if insert_at is not None and recipe != "expand":  # placement belongs to the expand family
        raise InputError(f"--insert-at places the new layers of --recipe expand, not of --recipe {recipe}")
    if recipe not in RECIPE_PARAMS:
        raise InputError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPE_PARAMS)})")
    params = {key: _given(given[key], default) for key, default in RECIPE_PARAMS[recipe].items()}
    for key, value in params.items():
        if value is None and insert_at is None:
            raise InputError(f"--recipe {recipe} needs --{key.replace('_', '-')}")
    if "factor" in params:  # the one multiplier of n: bound it before the list is made
        check_output_layers(n * int(params["factor"]))
    described = {"name": recipe, **params}
    if base.stack:  # recorded so that `dus verify` re-derives the stack and its nested config
        described["stack"] = base.layer_prefix + (f":{base.stack_config}" if base.stack_config else "")
        if base.stack_config:
            described["stack_config"] = base.stack_config
    if recipe == "layers":
        layers = layer_entries(params["layers"], sources)
        if not isinstance(params["layers"], str):
            described["layers"] = "explicit"
    elif recipe == "expand" and (init or insert_at):  # dus/plan/insert.py: placement and initialiser
        modules = residual_output_modules(base.layer_tensors[0])
        new_layers = None if params["new_layers"] is None else int(params["new_layers"])
        layers = insert.expand(n, insert.insertion_points(n, insert_at, new_layers), init or "zero-out", modules)
        described.update(new_layers=sum(layer.new for layer in layers), insert_at=insert_at, zeroed=list(modules))
    elif recipe == "expand":
        modules = residual_output_modules(base.layer_tensors[0])
        layers = recipes.expand(n, int(params["new_layers"]), modules)
        described["zeroed"] = list(modules)
    else:
        layers = getattr(recipes, recipe)(n, *(int(v) for v in params.values()))
    check_output_layers(len(layers))
    if init and recipe != "expand":
        layers = insert.mark_repeats(layers, init, residual_output_modules(base.layer_tensors[0]))
    if init:
        described["init"] = insert.init_record(init, layers)
        if width and init in insert.NEIGHBOUR_INITS:
            raise InputError(
                f"--init {init} with --width is not supported: build the deeper model first, then widen it"
            )
    if width:
        described["width"] = width
    overrides = options.config_overrides or {}
    if not isinstance(overrides, dict):
        raise InputError(f"config_overrides must be a mapping of config field: value, got {overrides!r}")
    plan = Plan(
        layers, {name: s.ref for name, s in sources.items()}, described, dict(overrides), dtype_name(options.dtype)
    )
    expert_options = {key: getattr(options, key) for key in EXPERT_OPTIONS}
    if any(value is not None for value in expert_options.values()):  # sparse upcycling (dus/plan/upcycle.py)
        from dus.plan.upcycle import upcycle_plan

        upcycle_plan(plan, base, expert_options)
    return plan


def _given(value, default):
    """A recipe parameter: the option given, else the recipe's default (None: not given)."""
    return default if value is None else value


def _width_only(options: PlanOptions) -> bool:
    depth = ("recipe", "overlap", "layers", "factor", "group", "new_layers", "init", "insert_at")
    return (options.width is not None or options.mlp_width is not None) and all(
        getattr(options, k) is None for k in depth
    )


def layer_entries(spec, sources: dict[str, Source]) -> list[OutputLayer]:
    """A layer SPEC string, or a recipe file's list of layer entries."""
    base_name = next(iter(sources))
    if isinstance(spec, MergekitLayers):
        return spec.output_layers(sources)
    if isinstance(spec, str):
        return [copy_of(i) for i in recipes.parse_layer_spec(spec, sources[base_name].num_layers)]
    if not isinstance(spec, list):
        raise InputError("layers must be a SPEC string like '0:24,8:32' or a list of layer entries")
    layers: list[OutputLayer] = []
    for entry in spec:
        layers.extend(_entry_layers(entry, sources, base_name))
    return layers


def _scale_edit(scale) -> Edit:
    modules, factor = (scale.get("modules"), scale.get("factor")) if isinstance(scale, dict) else (None, None)
    valid_modules = isinstance(modules, list) and modules and all(isinstance(m, str) for m in modules)
    if (
        not valid_modules
        or isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or set(scale)
        - {
            "modules",
            "factor",
        }
    ):
        raise InputError(f"scale {scale!r} must be a mapping of modules (a list of names) and factor (a number)")
    return Edit("scale", tuple(modules), float(factor))


def _entry_layers(entry, sources: dict[str, Source], base_name: str) -> list[OutputLayer]:
    if not isinstance(entry, dict):
        raise InputError(f"layer entry {entry!r} must be a mapping (range/layer/blend, with optional zero/scale/new)")
    source = entry.get("source", base_name)
    if source not in sources:
        raise InputError(f"layer entry names source {source!r}, which is not among the sources ({', '.join(sources)})")
    edits = []
    if "zero" in entry:
        edits.append(Edit("zero", tuple(entry["zero"]), 0.0))
    if "scale" in entry:
        edits.append(_scale_edit(entry["scale"]))
    new = bool(entry.get("new", bool(edits)))
    n = sources[source].num_layers
    if "range" in entry:
        if not (isinstance(entry["range"], list) and len(entry["range"]) == 2):
            raise InputError(f"layer entry {entry!r}: range must be [start, stop]")
        start, stop = entry["range"]
        indices = recipes.parse_layer_spec(f"{start}:{stop}", n)
        return [OutputLayer((LayerRef(i, source),), tuple(edits), new) for i in indices]
    if "layer" in entry:
        (index,) = recipes.parse_layer_spec(str(entry["layer"]), n)
        return [OutputLayer((LayerRef(index, source),), tuple(edits), new)]
    if "blend" in entry:
        items = entry["blend"]
        if not isinstance(items, list) or len(items) < 2:
            raise InputError("a blend needs a list of at least two layers")
        equal = 1.0 / len(items)  # unweighted items average
        refs = tuple(_blend_ref(item, source, equal) for item in items)
        return [OutputLayer(refs, tuple(edits), bool(entry.get("new", True)))]
    raise InputError(f"layer entry {entry!r} needs one of range, layer or blend")


def _blend_ref(item, default_source: str, default_weight: float) -> LayerRef:
    if isinstance(item, int):
        return LayerRef(item, default_source, default_weight)
    if isinstance(item, dict) and "layer" in item:
        return LayerRef(
            int(item["layer"]), item.get("source", default_source), float(item.get("weight", default_weight))
        )
    raise InputError(f"blend item {item!r} must be a mapping with layer, weight and optional source")
