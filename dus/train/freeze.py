"""Freezing by provenance: train all layers, only the new ones, or a chosen set.

`original` reads the layer map in `dus_plan.json`, which `dus build` writes next
to the model and every later stage carries forward (dus/manifest.py), and trains
only the layers the plan marks `new` (LLaMA-Pro block expansion):
embeddings, final norm and LM head stay frozen too. `layers:SPEC` trains the
listed output layers and likewise freezes everything else. On a widened model `original` trains
only the added width of every tensor (dus/train/freeze_width.py). Frozen parameters
get requires_grad=False and so no gradients and no optimizer state.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dus.errors import InputError
from dus.manifest import MANIFEST_FILE as PLAN_FILE
from dus.manifest import read_manifest
from dus.plan.model import Plan
from dus.plan.recipes import parse_layer_spec


def trainable_layers(freeze: str, model_dir: str, n: int) -> list[int] | None:
    """Indices of the output layers to train, or None to train everything."""
    if freeze in ("none", "router", "experts"):  # router / experts: by parameter name (dus/train/moe.py)
        return None
    if freeze == "original":
        return _new_layers(Path(model_dir), n)
    if freeze.startswith("layers:"):
        try:
            return sorted(set(parse_layer_spec(freeze[len("layers:") :], n)))
        except InputError as e:
            raise InputError(f"--freeze {freeze}: {e}") from None
    raise InputError(f"--freeze must be none, original, layers:SPEC, router or experts, not {freeze!r}")


def _new_layers(model_dir: Path, n: int) -> list[int] | None:
    path = model_dir / PLAN_FILE
    if not path.is_file():
        raise InputError(f"--freeze original needs {PLAN_FILE} in {model_dir} (written by `dus build`)")
    try:
        data = read_manifest(model_dir)
        plan = Plan.from_json(data.get("plan", data))
    except (TypeError, KeyError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if len(plan.layers) != n:
        raise InputError(f"{path} describes {len(plan.layers)} layers but the model has {n}")
    new = [i for i, layer in enumerate(plan.layers) if layer.new]
    if plan.recipe.get("width"):  # every tensor grew: dus/train/freeze_width.py trains only the added width
        return None
    if not new:
        raise InputError(f"--freeze original: {path} marks no layer as new, so nothing would train")
    return new


def apply_freeze(model: nn.Module, layers: nn.ModuleList, train: list[int] | None) -> None:
    if train is None:
        return
    model.requires_grad_(False)
    for i in train:
        layers[i].requires_grad_(True)
