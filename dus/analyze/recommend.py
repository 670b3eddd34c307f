"""Recommend the SOLAR overlap m from the layer-distance matrix and a size budget.

DUS with overlap m stacks base layers [0, n-m) then [m, n): s = 2(n-m) layers.
The seam feeds the output of layer n-m-1 (end of copy one) into layer m (start
of copy two), which was trained on the output of layer m-1. In HF hidden-state
indexing (hidden_states[i] = input of layer i = output of layer i-1) the state
layer m receives is hidden_states[n-m] where it expected hidden_states[m], so

    seam_distance(m) = distance[n-m][m].

Candidates are 1 <= m < n/2, every DUS that grows the model (m = n/2 rebuilds
the original, with a seam distance of exactly 0). Each m is one size, and the
seam distance shrinks as m grows (the two joined states are n-2m layers apart),
so the budget decides the size: the largest DUS not exceeding --target-params
or --target-layers (default: SOLAR's 1.5x depth, s <= 3n/2). --slack-layers K
also admits DUS models up to K layers smaller than that one, and the smoothest
seam (smallest distance) among the admitted wins; ties go to the larger model.
"""

from __future__ import annotations

from dus.errors import InputError


def dus_layers(n: int, m: int) -> list[int]:
    return list(range(n - m)) + list(range(m, n))


def dus_sizes(layer_params: list[int], other_params: int) -> list[dict]:
    """One row per candidate overlap: layers, parameter count and the two layers the seam joins."""
    n = len(layer_params)
    rows = []
    for m in range(1, (n + 1) // 2):
        params = other_params + sum(layer_params[i] for i in dus_layers(n, m))
        rows.append({"overlap": m, "layers": 2 * (n - m), "params": params, "seam": [n - m - 1, m]})
    if not rows:
        raise InputError(f"a {n}-layer model has no DUS that grows it (needs at least 3 layers)")
    return rows


def apply_budget(
    rows: list[dict], target_params: int | None = None, target_layers: int | None = None, slack_layers: int = 0
) -> dict:
    """Mark each row `allowed`; return the budget. Raise InputError if no row fits."""
    n = rows[0]["layers"] // 2 + rows[0]["overlap"]
    key, limit, flag = check_budget(target_params, target_layers, slack_layers) or ("layers", 3 * n // 2, _DEFAULT)
    within = [r for r in rows if r[key] <= limit]
    if not within:
        smallest = rows[-1]
        raise InputError(
            f"{flag} {limit:,} is smaller than the smallest DUS of this {n}-layer model "
            f"({smallest['layers']} layers, {smallest['params']:,} params at overlap {smallest['overlap']})"
        )
    top = max(r["layers"] for r in within)
    for r in rows:
        r["allowed"] = r[key] <= limit and r["layers"] >= top - slack_layers
    return {"by": key, "limit": limit, "option": flag, "slack_layers": slack_layers}


def recommend_overlap(
    distance: list[list[float]],
    layer_params: list[int],
    other_params: int,
    target_params: int | None = None,
    target_layers: int | None = None,
    slack_layers: int = 0,
) -> dict:
    """The overlap with the smoothest seam among those the budget admits, with the table behind it."""
    n = len(layer_params)
    if len(distance) != n + 1:
        raise InputError(f"distance matrix is {len(distance)}x{len(distance)}, expected {n + 1}x{n + 1}")
    rows = dus_sizes(layer_params, other_params)
    budget = apply_budget(rows, target_params, target_layers, slack_layers)
    for r in rows:
        r["seam_distance"] = distance[n - r["overlap"]][r["overlap"]]
    best = min((r for r in rows if r["allowed"]), key=lambda r: (r["seam_distance"], -r["layers"]))
    return {
        "overlap": best["overlap"],
        "layers": best["layers"],
        "params": best["params"],
        "seam_distance": best["seam_distance"],
        "base_layers": n,
        "base_params": other_params + sum(layer_params),
        "budget": budget,
        "candidates": rows,
    }


def explain(rec: dict) -> str:
    """The reasoning as text: the budget, a table of the candidates, the choice."""
    n, b = rec["base_layers"], rec["budget"]
    lines = [
        f"DUS overlap m stacks layers [0, n-m) + [m, n) of the n={n}-layer base ({rec['base_params']:,} params);",
        "the seam feeds the output of layer n-m-1 into layer m: "
        "seam distance = distance(hidden_states[n-m], hidden_states[m]).",
        f"budget: {b['by']} <= {b['limit']:,} ({b['option']})"
        + (f", slack {b['slack_layers']} layers" if b["slack_layers"] else "")
        + "; smoothest seam among the allowed rows wins.",
        "",
        f"{'m':>4} {'layers':>7} {'params':>15} {'seam':>9} {'distance':>9}  allowed",
    ]
    for r in rec["candidates"]:
        allowed = "yes" if r["allowed"] else "no"
        mark = "  <- recommended" if r["overlap"] == rec["overlap"] else ""
        seam = f"{r['seam'][0]}->{r['seam'][1]}"
        lines.append(
            f"{r['overlap']:>4} {r['layers']:>7} {r['params']:>15,} {seam:>9} {r['seam_distance']:>9.4f}  "
            f"{allowed:<7}{mark}".rstrip()
        )
    lines += [
        "",
        f"recommended overlap m={rec['overlap']}: {rec['layers']} layers, {rec['params']:,} params, "
        f"seam distance {rec['seam_distance']:.4f}",
    ]
    return "\n".join(lines)


_DEFAULT = "default: SOLAR's 1.5x depth"


def check_budget(
    target_params: int | None = None, target_layers: int | None = None, slack_layers: int = 0
) -> tuple[str, int, str] | None:
    """Validate the budget options alone (before any model is loaded): (key, limit, option) or None."""
    if slack_layers < 0:
        raise InputError(f"--slack-layers must be >= 0, got {slack_layers}")
    if target_params is not None and target_layers is not None:
        raise InputError("give --target-params or --target-layers, not both")
    if target_params is not None:
        if target_params <= 0:
            raise InputError(f"--target-params must be positive, got {target_params}")
        return "params", target_params, "--target-params"
    if target_layers is not None:
        if target_layers <= 0:
            raise InputError(f"--target-layers must be positive, got {target_layers}")
        return "layers", target_layers, "--target-layers"
    return None
