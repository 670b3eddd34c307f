"""The two pictures: per-layer influence bars and the layer-distance heatmap.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot), so plotting
neither needs a display nor changes the backend of a caller's session.
"""

from __future__ import annotations

from pathlib import Path


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_influence(influence: list[float], path: Path, title: str = "") -> Path:
    """Bar per layer l: Block Influence 1 - cos(input, output), averaged over tokens."""
    fig = figure(max(6.0, 0.25 * len(influence) + 2), 3.5)
    ax = fig.subplots()
    ax.bar(range(len(influence)), influence, color="tab:blue")
    ax.set_xlabel("layer l")
    ax.set_ylabel("BI_l = 1 - cos(h_in, h_out)")
    ax.set_title(title or "per-layer influence (higher: the layer changes the residual stream more)")
    ax.set_xlim(-0.6, len(influence) - 0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_distance(distance: list[list[float]], path: Path, rec: dict | None = None, title: str = "") -> Path:
    """Heatmap of distance[i][j] over hidden-state indices, the candidate seams (n-m, m) marked."""
    size = len(distance)
    fig = figure(6.5, 5.5)
    ax = fig.subplots()
    image = ax.imshow(distance, cmap="viridis", vmin=0.0, origin="upper")
    fig.colorbar(image, ax=ax, label="angular distance arccos(cos)/pi, last token")
    if rec is not None:
        n = size - 1
        rows = rec["candidates"]
        ax.scatter(
            [n - r["overlap"] for r in rows],
            [r["overlap"] for r in rows],
            s=12,
            c="white",
            marker="o",
            label="seam of overlap m: (n-m, m)",
        )
        ax.scatter(
            [n - rec["overlap"]],
            [rec["overlap"]],
            s=80,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label=f"recommended m={rec['overlap']}",
        )
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("hidden state j (0 = embeddings, j = output of layer j-1)")
    ax.set_ylabel("hidden state i")
    ax.set_title(title or "distance between hidden states")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
