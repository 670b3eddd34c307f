"""The width-growth operator (dus/plan/width.py plans it): a source tensor tiled, scaled, optionally noised.

Deterministic on a CPU: the blend is summed in float32 (float64 for a float64 input) in a fixed order, the
noise comes from a torch.Generator seeded by the recorded per-tensor seed. So `dus verify` recomputes the same bytes
and compares them exactly (with the same torch version; see docs/recipes.md).
"""

from __future__ import annotations

import torch

from dus.write.operators import register


@register("width_tile")
def width_tile(inputs, reps, scale, weights, factor=1.0, gemma_norm=False, noise=0.0, seed=0):
    wide = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    x = sum(t.to(wide) * w for t, w in zip(inputs, weights)) * factor
    if gemma_norm and scale != 1.0:  # Gemma's RMSNorm multiplies by (1 + w): scale that product
        x = (1.0 + x) * scale - 1.0
    elif scale != 1.0:
        x = x * scale
    out = x.repeat(*reps)
    if noise:
        out = out + symmetric_noise(x, reps, noise, seed)
    return out


def symmetric_noise(x, reps, noise: float, seed: int):
    """Noise of the tiled shape whose blocks along the input (last) dimension sum to zero, so that
    W'·tile(v) is unchanged; its standard deviation is `noise` times the tensor's."""
    a, b = reps
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randn((a, b, *x.shape), generator=generator, dtype=x.dtype)
    draw = (draw - draw.mean(dim=1, keepdim=True)) * (noise * float(x.std()))
    # (a, b, out, in) -> (a·out, b·in): block (i, j) of the tiled matrix gets draw[i, j]
    return draw.permute(0, 2, 1, 3).reshape(a * x.shape[0], b * x.shape[1])
