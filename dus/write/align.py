"""Neuron alignment by entropic optimal transport (Sinkhorn), rounded to a permutation (OpT-DeUS).

Units (MLP neurons, or attention key/value groups) of layer B are matched to those of layer A by
their weight vectors: cost = squared distance, normalised by its mean; Sinkhorn's plan with uniform
marginals (log domain, a fixed number of iterations, float64) is rounded to the permutation that
carries the most mass (a linear assignment). Deterministic given the same inputs and settings.
"""

from __future__ import annotations

import torch


def sinkhorn_plan(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """log of the transport plan between two uniform distributions over the rows and the columns."""
    n, m = cost.shape
    log_k = -cost / epsilon
    log_a, log_b = torch.full((n,), -float(torch.log(torch.tensor(float(n)))), dtype=cost.dtype), \
        torch.full((m,), -float(torch.log(torch.tensor(float(m)))), dtype=cost.dtype)
    f, g = torch.zeros(n, dtype=cost.dtype), torch.zeros(m, dtype=cost.dtype)
    for _ in range(iterations):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
    return log_k + f[:, None] + g[None, :]


def match(units_a: torch.Tensor, units_b: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """perm such that units_b[perm] is aligned with units_a (one row per unit)."""
    from scipy.optimize import linear_sum_assignment

    a, b = units_a.to(torch.float64), units_b.to(torch.float64)
    cost = torch.cdist(a, b) ** 2
    cost = cost / cost.mean().clamp_min(1e-300)
    plan = sinkhorn_plan(cost, epsilon, iterations)
    _, columns = linear_sum_assignment(plan.numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.long)
