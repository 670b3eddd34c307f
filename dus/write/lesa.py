"""LESA-style prediction of an inserted layer (arXiv 2502.13794), for one tensor kind at a time.

The stack's n tensors of one kind (say every layer's up_proj) are centred and decomposed (SVD via
the n×n Gram matrix, accumulated over fixed-size column chunks); each layer is then r coefficients
in a shared basis. A ridge-regularised linear map is fitted from the coefficients of layers l−1 and
l+1 to those of layer l over the stack, and applied to layers p and p+1 to predict the layer inserted
between them. The prediction is a weighted sum of the layers, summed one layer at a time: memory is
the n decoded inputs plus three float64 tensors of one layer's size. float64 throughout, fixed
chunking and order: deterministic given the inputs and settings.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 16  # columns per Gram-matrix step (n × CHUNK float64 temporaries)


def predict(layers: list[torch.Tensor], after: int, rank: int, ridge: float) -> torch.Tensor:
    flat = [t.reshape(-1) for t in layers]
    n = len(flat)
    mean = sum(f.to(torch.float64) for f in flat) / n
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, mean.numel(), CHUNK):
        part = torch.stack([f[start : start + CHUNK].to(torch.float64) for f in flat]) - mean[start : start + CHUNK]
        gram += part @ part.T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    keep = values > values.max() * 1e-12
    values, vectors = values[keep].flip(0)[:rank], vectors[:, keep].flip(1)[:, :rank]
    coefficients = vectors * values.sqrt()  # n × r: layer l = mean + coefficients[l] · basis
    ones = torch.ones(n - 2, 1, dtype=torch.float64)
    inputs = torch.cat([coefficients[:-2], coefficients[2:], ones], dim=1)
    targets = coefficients[1:-1]
    normal = inputs.T @ inputs
    normal += torch.eye(len(normal), dtype=torch.float64) * ridge * normal.diagonal().mean()
    mapping = torch.linalg.solve(normal, inputs.T @ targets)
    query = torch.cat([coefficients[after], coefficients[after + 1], torch.ones(1, dtype=torch.float64)])
    # basis k = Σ_l vectors[l, k] (x_l − mean) / sqrt(value k): the prediction is mean + Σ_l weights[l] (x_l − mean)
    weights = vectors @ ((query @ mapping) / values.sqrt())
    out = mean * (1.0 - float(weights.sum()))
    for weight, f in zip(weights.tolist(), flat):
        out += weight * f.to(torch.float64)
    return out.reshape(layers[0].shape)
