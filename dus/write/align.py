"""Neuron alignment by entropic optimal transport (Sinkhorn), rounded to a permutation (OpT-DeUS).

Units (MLP neurons, or attention key/value groups) of layer B are matched to those of layer A by
their weight vectors: cost = squared distance, normalised by its mean; Sinkhorn's plan with uniform
marginals (a fixed number of iterations, float64) is rounded to the permutation that
carries the most mass (a linear assignment). Deterministic given the same inputs and settings.
"""

from __future__ import annotations

import torch


def sinkhorn_plan(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The transport plan between two uniform distributions over the rows and the columns.

    The kernel exp(−cost/ε) is computed once, each row shifted by its smallest cost (a row scaling,
    which the row potentials absorb: the plan is the same, and no row underflows to all zeros);
    the iterations are then matrix-vector products."""
    n, m = cost.shape
    kernel = torch.exp(-(cost - cost.min(dim=1, keepdim=True).values) / epsilon)
    a, b = torch.full((n,), 1.0 / n, dtype=cost.dtype), torch.full((m,), 1.0 / m, dtype=cost.dtype)
    v = torch.ones(m, dtype=cost.dtype)
    for _ in range(iterations):
        u = a / (kernel @ v).clamp_min(1e-300)
        v = b / (kernel.T @ u).clamp_min(1e-300)
    return u[:, None] * kernel * v[None, :]


def match(units_a: torch.Tensor, units_b: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """perm such that units_b[perm] is aligned with units_a (one row per unit)."""
    from scipy.optimize import linear_sum_assignment

    a, b = units_a.to(torch.float64), units_b.to(torch.float64)
    cost = torch.cdist(a, b) ** 2
    cost = cost / cost.mean().clamp_min(1e-300)
    _, columns = linear_sum_assignment(sinkhorn_plan(cost, epsilon, iterations).numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.long)
