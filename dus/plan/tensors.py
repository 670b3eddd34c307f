"""Every output tensor of a plan: its layer layout (dus/plan/layout.py), then the growth operators the
plan records (dus/plan/width_tensors.py), then the experts of an upcycled plan (dus/plan/upcycle.py).
dus.api.plan and `dus verify` both derive tensors here."""

from __future__ import annotations

from dus.plan.init_tensors import initialised
from dus.plan.layout import TensorSpec, layout
from dus.plan.model import Plan
from dus.plan.upcycle import upcycled
from dus.plan.width_tensors import widen


def planned_tensors(plan: Plan, sources: dict) -> list[TensorSpec]:
    specs = layout(plan, sources)
    if plan.recipe.get("init", {}).get("layers"):  # aligned-average, predicted
        specs = initialised(specs, plan, sources)
    if plan.recipe.get("width"):
        base = sources[plan.base]
        specs = widen(specs, base.config, base.layer_prefix, plan.recipe["width"])
    return upcycled(specs, plan, sources) if plan.moe else specs
