"""LESA-style prediction of an inserted layer (arXiv 2502.13794), for one tensor kind at a time.

The stack's n tensors of one kind (say every layer's up_proj) are centred and decomposed (SVD via
the n×n Gram matrix: memory n tensors, not n²); each layer is then r coefficients in a shared basis.
A ridge-regularised linear map is fitted from the coefficients of layers l−1 and l+1 to those of
layer l over the stack, and applied to layers p and p+1 to predict the layer inserted between them.
Everything in float64 on the CPU with fixed sizes: deterministic given the inputs and settings.
"""

from __future__ import annotations

import torch


def predict(layers: list[torch.Tensor], after: int, rank: int, ridge: float) -> torch.Tensor:
    x = torch.stack([t.reshape(-1).to(torch.float64) for t in layers])  # n × D
    mean = x.mean(dim=0)
    x -= mean
    values, vectors = torch.linalg.eigh(x @ x.T)  # ascending
    keep = values > values.max() * 1e-12
    values, vectors = values[keep].flip(0)[:rank], vectors[:, keep].flip(1)[:, :rank]
    coefficients = vectors * values.sqrt()  # n × r: layer l = mean + coefficients[l] · basis
    inputs = torch.cat([coefficients[:-2], coefficients[2:], torch.ones(len(layers) - 2, 1, dtype=x.dtype)], dim=1)
    targets = coefficients[1:-1]
    gram = inputs.T @ inputs
    gram += torch.eye(len(gram), dtype=x.dtype) * ridge * gram.diagonal().mean()
    mapping = torch.linalg.solve(gram, inputs.T @ targets)
    query = torch.cat([coefficients[after], coefficients[after + 1], torch.ones(1, dtype=x.dtype)])
    predicted = query @ mapping  # r coefficients
    # basis k = x.T @ vectors[:, k] / sqrt(value k): the prediction is a weighted sum of the centred layers
    weights = vectors @ (predicted / values.sqrt())
    return (mean + weights @ x).reshape(layers[0].shape)
