"""Draw a plan's layer map: source layers on the left, output layers on the right."""

from __future__ import annotations

from pathlib import Path

from dus.plan.model import Plan

COLORS = {"copy": "#4c72b0", "blend": "#dd8452", "zero": "#c44e52", "scale": "#8172b3"}


def layer_ticks(count: int, height: int) -> tuple[list[float], list[str]]:
    """Positions and labels of layer numbers on one column's axis: every layer up to 16, else a round step."""
    step = 1 if count <= 16 else next(s for s in (2, 5, 10, 20, 50, 100, 200, 500) if count / s <= 16)
    shown = list(range(0, count, step))
    if count - 1 - shown[-1] > step / 2:  # the last layer, unless its label would touch the one below
        shown.append(count - 1)
    return [i * (height - 1) / max(count - 1, 1) for i in shown], [str(i) for i in shown]


def plot_plan(plan: Plan, source_layers: int, path: str | Path) -> dict[str, list[str]]:
    """Draw the map to `path`; return the layer numbers written on each axis (source left, output right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_layers = len(plan.layers)
    height = max(source_layers, out_layers)
    fig, ax = plt.subplots(figsize=(4.5, max(3.0, 0.16 * height + 1.2)))
    # Layer 0 at the bottom, as a model is usually drawn; both columns share one scale.
    src_y = [i * (height - 1) / max(source_layers - 1, 1) for i in range(source_layers)]
    out_y = [i * (height - 1) / max(out_layers - 1, 1) for i in range(out_layers)]
    for i, layer in enumerate(plan.layers):
        for ref in layer.inputs:
            ax.plot(
                [0, 1],
                [src_y[ref.layer], out_y[i]],
                color=COLORS[layer.op],
                lw=0.9,
                alpha=0.85 if len(layer.inputs) == 1 else 0.6,
            )
    ax.scatter([0] * source_layers, src_y, s=14, color="black", zorder=3)
    ax.scatter(
        [1] * out_layers,
        out_y,
        s=14,
        zorder=3,
        color=["white" if l.new else "black" for l in plan.layers],
        edgecolors="black",
    )
    for op, color in COLORS.items():
        if any(l.op == op for l in plan.layers):
            ax.plot([], [], color=color, label=op)
    if any(l.new for l in plan.layers):
        ax.scatter([], [], s=14, color="white", edgecolors="black", label="new layer")
    ax.set_xticks([0, 1], [f"source ({source_layers})", f"output ({out_layers})"])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylim(-0.5, height - 0.5)
    ax.set_yticks(*layer_ticks(source_layers, height), fontsize=6)
    ax.set_ylabel("source layer", fontsize=8)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(*layer_ticks(out_layers, height), fontsize=6)
    right.set_ylabel("output layer", fontsize=8)
    for axis in (ax, right):
        for side in ("top", "right", "left", "bottom"):
            axis.spines[side].set_visible(False)
    name = plan.recipe.get("name", "plan")
    ax.set_title(f"{name}: {source_layers} → {out_layers} layers", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    labels = {
        "source": [t.get_text() for t in ax.get_yticklabels()],
        "output": [t.get_text() for t in right.get_yticklabels()],
    }
    plt.close(fig)
    return labels
