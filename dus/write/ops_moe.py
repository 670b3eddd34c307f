"""Tensor operators of sparse upcycling (dus/plan/upcycle.py): routers and expert initialisations.

Each is deterministic in its inputs and parameters: random draws come from a generator seeded by
a digest of the user's seed and the tensor's coordinates (layer, expert, projection), so `dus
verify` recomputes the same bytes and no two tensors share a stream. Arithmetic is float32; the
build casts the result to the output dtype.
"""

from __future__ import annotations

import hashlib

import torch

from dus.write.operators import register


def generator(*coordinates) -> torch.Generator:
    digest = hashlib.blake2b(repr(coordinates).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@register("moe_drop")
def drop(inputs, *, axis: int, expert: int, layer: int, projection: str, seed: int, ratio: float) -> torch.Tensor:
    """Drop-Upcycling: the neurons this expert re-initialises (the same ones in gate, up and down:
    drawn from the expert's own stream) get values from N(mean, std) of the dense matrix."""
    weight = inputs[0].to(torch.float32)
    neurons = weight.shape[axis]
    count = round(ratio * neurons)
    chosen = torch.randperm(neurons, generator=generator("drop", seed, layer, expert))[:count]
    shape = list(weight.shape)
    shape[axis] = count
    fresh = torch.randn(shape, generator=generator("drop", seed, layer, expert, projection), dtype=torch.float32)
    fresh = fresh * weight.std() + weight.mean()
    out = weight.clone()
    out.index_copy_(axis, chosen, fresh)
    return out


@register("moe_noise")
def noise(inputs, *, expert: int, layer: int, projection: str, seed: int, scale: float) -> torch.Tensor:
    """A copy plus Gaussian noise of std scale x the dense matrix's std."""
    weight = inputs[0].to(torch.float32)
    draw = torch.randn(weight.shape, generator=generator("noise", seed, layer, expert, projection), dtype=torch.float32)
    return weight + draw * (scale * weight.std())


@register("moe_split_down")
def split_down(inputs, *, expert: int, experts: int) -> torch.Tensor:
    """Expert e's columns of the dense down projection, times E: its routing weight is 1/E when all
    E experts are active, so their sum is the dense MLP (exactly where E is a power of two)."""
    weight = inputs[0].to(torch.float32)
    size = weight.shape[1] // experts
    return weight[:, expert * size:(expert + 1) * size] * experts
