"""The plan options, declared once: each field of PlanOptions is a `dus plan` / `dus build` flag, a key
of the recipe file (--config), a keyword of `dus.plan` / `dus.build` and a row of the table in
docs/recipes.md. Adding an option is adding a field here (and reading it where it acts).

A field left None was not given: the recipe's own default applies (RECIPE_PARAMS, dus/plan/recipe_options.py).
Precedence: a recipe file (its `preset:` expanded under its own keys) < --preset < the options given.
A field typed `object` takes any YAML value (a list of layer entries, a mapping); its flag is a string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from dus.errors import InputError
from dus.options import from_mapping, names, option
from dus.plan.mergekit import is_mergekit, recipe_options, yaml_source
from dus.plan.presets import PRESETS
from dus.plan.recipe_options import check_recipe_options, recipe_name
from dus.yamlfile import read_mapping

PANEL = "Plan options (the defaults come from --config or --preset when given)"
MOE_PANEL = "Experts (sparse upcycling: docs/upcycle.md)"
GROWTH_PANEL = "Width growth and new-layer initialisers (docs/recipes.md)"
# Sections of a `dus pipeline` recipe (dus/pipeline/recipe.py): the same file builds with `dus build --config`.
PIPELINE_SECTIONS = {"build", "pretrain", "sft", "dpo", "contamination", "eval", "prepare"}


def plan_option(help: str, default=None, **kwargs):
    return option(default, help, panel=PANEL, **kwargs)


def growth_option(help: str, **kwargs):
    return option(None, help, panel=GROWTH_PANEL, **kwargs)


@dataclass
class PlanOptions:
    source: str | None = option(
        None,
        "Model directory, Hub repo id, a .gguf file, or a bare config.json (or `source:` in --config)",
        positional=True,
        metavar="SOURCE",
    )
    sources: object = plan_option(
        "Several source models, name: model (the first is the base: config and "
        "non-layer tensors); layer entries name them.",
        cli=False,
    )
    recipe: str | None = plan_option("dus | stack | interleave | idus | expand | layers.")
    overlap: int | None = plan_option(
        "SOLAR DUS: drop the last M layers of copy one and the first M of copy two [default: 8]."
    )
    layers: object = plan_option(
        "Explicit stack of source layers: half-open ranges and indices, e.g. 0:24,8:32 or "
        "0:8,7,7,8:16 (in --config also a list of layer entries)."
    )
    factor: int | None = plan_option("stack / interleave: growth factor G [default: 2].")
    group: int | None = plan_option("idus: layers per group K [default: 8].")
    new_layers: int | None = plan_option("expand: number of zero-initialised identity blocks to insert.")
    dtype: str | None = plan_option("auto | bfloat16 | float16 | float32 [default: auto, keep the source's].")
    preset: str | None = plan_option("A published recipe: solar (SOLAR-10.7B from Mistral-7B).")
    config_overrides: object = plan_option("Merged into the output config.json; null deletes a key.", cli=False)
    shard_size: object = plan_option(
        "Largest shard, e.g. 5GB, 500MB, 2GiB [default: 5GB]; --shard-size wins.", cli=False
    )
    stack: str | None = plan_option(
        "PREFIX[:CONFIG]: the numbered tensor-name prefix to grow where the checkpoint holds several stacks (a "
        "language model beside a vision tower), and the nested config counting its layers when the count cannot "
        "tell (see docs/recipes.md)."
    )
    allow_index_dependent: bool = plan_option(
        "Build even where the architecture computes part of a layer from its index (the copies then differ from "
        "their sources); recorded in dus_plan.json and the model card.",
        default=False,
    )
    # Width growth and new-layer initialisers (dus/plan/width.py, dus/plan/insert.py).
    width: float | None = growth_option(
        "Grow hidden size, query and key/value heads and MLP by this whole factor, "
        "keeping the function (HyperCloning).",
        metavar="F",
    )
    mlp_width: float | None = growth_option(
        "Grow only the MLP's intermediate size by this whole factor (Net2Net).", metavar="F"
    )
    width_noise: float | None = growth_option(
        "Symmetry-breaking noise on the cloned weights, as a multiple of each "
        "weight's standard deviation; cancels in the function [default: 0].",
        metavar="SCALE",
    )
    width_seed: int | None = growth_option("Seed of the width noise [default: 0].")
    init: str | None = growth_option(
        "How inserted or repeated layers start: copy | zero-out | aligned-average | "
        "predicted [default: zero-out for expand, copy otherwise]."
    )
    insert_at: str | None = growth_option(
        "expand: where new layers go: top-half | every:K | I,J,… (after these "
        "source layers) [default: after every n/K layers]."
    )

    # Sparse upcycling (dus/plan/upcycle.py, docs/upcycle.md): any of these grows every output layer's MLP into
    # experts and a router; dus/plan/moe_family.py checks them.
    experts: int | None = option(
        None, "Also grow every layer's MLP into E experts and a router (dense -> MoE).", panel=MOE_PANEL
    )
    top_k: int | None = option(None, "Experts each token uses K (1..E) [default: 2].", panel=MOE_PANEL)
    expert_init: str | None = option(
        None, "copy | drop | split | noise [default: copy, which keeps the function].", panel=MOE_PANEL
    )
    expert_seed: int | None = option(None, "Seed of the router and of drop/noise draws [default: 0].", panel=MOE_PANEL)
    drop_ratio: float | None = option(
        None, "--expert-init drop: share of each expert's neurons re-initialised [default: 0.5].", panel=MOE_PANEL
    )
    noise_scale: float | None = option(
        None, "--expert-init noise: noise std as a multiple of each matrix's std [default: 0.01].", panel=MOE_PANEL
    )
    router_std: float | None = option(
        None,
        "Std of the seeded router weights [default: the config's initializer_range, else 0.02].",
        panel=MOE_PANEL,
        cli=False,
    )
    calibration: str | None = option(
        None,
        "--expert-init split: group neurons that fire together on this text file, not by position.",
        panel=MOE_PANEL,
    )

    def recorded(self) -> dict:
        """The options given, in the order given, as dus_plan.json records them (`dus pipeline` compares
        them with its recipe): a preset as the values it set; --allow-index-dependent has its own field."""
        given = self.__dict__.get("given_order")  # set by plan_options
        if given is None:  # made in Python, not by plan_options: what is set
            given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        return {k: getattr(self, k) for k in given if k not in NOT_RECORDED and _jsonable(getattr(self, k))}


NOT_RECORDED = ("preset", "allow_index_dependent")
RECIPE_KEYS = set(names(PlanOptions))  # every spelling: new_layers, new-layers


def plan_options(values: dict, config: str | Path | None = None) -> PlanOptions:
    """PlanOptions from a recipe file, a preset and the options given (None: not given).

    Options the chosen recipe would ignore are refused (dus/plan/recipe_options.py): those given and a
    recipe file's own keys, never a preset's values. A stack given with --layers beats the recipe of a
    preset or a recipe file unless --recipe is given too. A YAML file as SOURCE is the recipe file
    (`dus plan merge.yml`, a mergekit passthrough recipe included)."""
    if config is None and yaml_source(values.get("source")):
        values, config = {**values, "source": None}, values["source"]
    merged: dict = dict(load_recipe_file(config)) if config else {}
    if config:
        check_recipe_options(_recipe(merged), merged, f"{config}: ")
    given = {k: v for k, v in values.items() if v is not None}
    if given.get("preset"):
        merged.update(preset(given["preset"]))
    merged.update({k: v for k, v in given.items() if k != "preset"})
    if given.get("layers") is not None and given.get("recipe") is None and merged.get("recipe") not in (None, "layers"):
        merged["recipe"] = "layers"  # the explicit stack wins, as README says
    check_recipe_options(_recipe(merged), given)
    options = from_mapping(PlanOptions, merged, str(config) if config else "options")
    options.given_order = [names(PlanOptions)[k] for k in merged]
    return options


def _recipe(merged: dict) -> str:
    return recipe_name(merged.get("recipe"), merged.get("layers"), merged.get("insert_at"))


def load_recipe_file(path: str | Path) -> dict:
    mapping = read_mapping(path)
    if is_mergekit(mapping):  # a mergekit passthrough recipe (dus/plan/mergekit.py)
        return recipe_options(mapping, path)
    data = {k: v for k, v in mapping.items() if k not in PIPELINE_SECTIONS}
    unknown = sorted(set(data) - RECIPE_KEYS)
    if unknown:
        known = ", ".join(sorted(f.name for f in fields(PlanOptions)))
        raise InputError(f"{path}: unknown recipe key {unknown[0]!r} (known: {known})")
    data = {names(PlanOptions)[k]: v for k, v in data.items()}
    if "preset" in data:
        data = {**preset(data.pop("preset")), **data}
    return data


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name])


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
