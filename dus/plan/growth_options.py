"""Options of the width and new-layer growth operators, shared by `dus plan`, `dus build`, the
Python API (dus.plan / dus.build keywords) and recipe files; declared once (dus/options.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from dus.options import from_mapping, option

_PANEL = "Width growth and new-layer initialisers (docs/recipes.md)"


@dataclass
class GrowthOptions:
    width: float | None = option(None, "Grow hidden size, query and key/value heads and MLP by this whole factor, "
                                       "keeping the function (HyperCloning).", metavar="F", panel=_PANEL)
    mlp_width: float | None = option(None, "Grow only the MLP's intermediate size by this whole factor (Net2Net).",
                                     metavar="F", panel=_PANEL)
    width_noise: float | None = option(None, "Symmetry-breaking noise on the cloned weights, as a multiple of each "
                                             "weight's standard deviation; cancels in the function [default: 0].",
                                       metavar="SCALE", panel=_PANEL)
    width_seed: int | None = option(None, "Seed of the width noise [default: 0].", panel=_PANEL)
    init: str | None = option(None, "How inserted or repeated layers start: copy | zero-out | aligned-average | "
                                    "predicted [default: zero-out for expand, copy otherwise].", panel=_PANEL)
    insert_at: str | None = option(None, "expand: where new layers go: top-half | every:K | I,J,… (after these source "
                                         "layers) [default: after every n/K layers].", panel=_PANEL)


GROWTH_KEYS = tuple(f.name for f in fields(GrowthOptions))


def growth_options(values: dict) -> dict:
    """The given growth options, checked and typed (None: not given)."""
    given = {k: v for k, v in values.items() if v is not None}
    checked = from_mapping(GrowthOptions, given)
    return {k: getattr(checked, k) for k in given}
