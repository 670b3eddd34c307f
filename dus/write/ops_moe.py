"""Tensor operators of sparse upcycling (dus/plan/upcycle.py): the router and the expert initialisations.

Computed with numpy from the tensors' bytes, never torch, so that an upcycle stays on the torch-free
copy path and `dus verify` recomputes the same bytes anywhere: random draws are a PCG64 bit stream
(numpy guarantees BitGenerator streams across versions) seeded by a digest of the user's seed and the
tensor's coordinates (layer, expert, projection), so no two tensors share a stream; normal draws are
Irwin-Hall's sum of 12 uniforms minus 6 (mean 0, variance 1, tails cut at 6 sigma), added in a fixed
order, with no transcendental function a platform may round differently; statistics are float64
numpy reductions (single-threaded, one summation order), not multi-threaded torch ones. The
torch forms (`register`) return the same values for callers of dus.write.compute.compute_tensor.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dus.read.safetensors import TensorInfo
from dus.write.operators import register, register_bytes

_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def stream(count: int, *coordinates) -> np.ndarray:
    """`count` uint64 draws of the stream these coordinates name."""
    digest = hashlib.blake2b(repr(coordinates).encode(), digest_size=8).digest()
    return np.random.PCG64(int.from_bytes(digest, "little")).random_raw(count)


def normal(shape: tuple[int, ...], *coordinates) -> np.ndarray:
    """N(0, 1) draws (Irwin-Hall, float64) of the stream these coordinates name."""
    n = int(np.prod(shape))
    uniforms = (stream(12 * n, *coordinates) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    uniforms = uniforms.reshape(12, n)
    total = uniforms[0].copy()
    for part in uniforms[1:]:
        total += part
    return (total - 6.0).reshape(shape)


def decode(info: TensorInfo) -> np.ndarray:
    """A float tensor's values as float64, from its bytes."""
    with open(info.path, "rb") as f:
        f.seek(info.start)
        raw = f.read(info.nbytes)
    if info.dtype == "BF16":
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    elif info.dtype in _FLOATS:
        values = np.frombuffer(raw, _FLOATS[info.dtype])
    else:
        raise ValueError(f"an expert is a float tensor, not {info.dtype}")
    return values.astype(np.float64).reshape(info.shape)


def float_bytes(values: np.ndarray, dtype: str) -> bytes:
    """Values as little-endian `dtype` bytes; bfloat16 rounded from float32 to nearest even, as torch does."""
    if dtype == "BF16":
        bits = values.astype("<f4").view("<u4").astype(np.uint64)
        rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
        return rounded.astype("<u2").tobytes()
    if dtype not in _FLOATS:
        raise ValueError(f"a computed expert or router is a float tensor, not {dtype}")
    return values.astype(_FLOATS[dtype]).tobytes()


def router(experts: int, hidden: int, layer: int, seed: int, std: float) -> np.ndarray:
    """N(0, std): with identical experts any router keeps the function, and a random one sends tokens
    to different experts so that training tells them apart."""
    return normal((experts, hidden), "router", seed, layer) * std


def shared_gate(hidden: int, layer: int, seed: int, std: float) -> np.ndarray:
    """N(0, std) for a shared expert's sigmoid gate (Qwen2-MoE): the shared expert's down projection is zero, so
    any gate keeps the function; a random one gives the gate a gradient to learn from."""
    return normal((1, hidden), "shared_gate", seed, layer) * std


def drop(
    weight: np.ndarray, axis: int, expert: int, layer: int, projection: str, seed: int, ratio: float
) -> np.ndarray:
    """Drop-Upcycling: the neurons this expert re-initialises (the same in gate, up and down: drawn from
    the expert's own stream) get values from N(mean, std) of the dense matrix."""
    neurons = weight.shape[axis]
    count = round(ratio * neurons)
    chosen = np.argsort(stream(neurons, "drop", seed, layer, expert), kind="stable")[:count]
    shape = list(weight.shape)
    shape[axis] = count
    fresh = normal(tuple(shape), "drop", seed, layer, expert, projection) * weight.std(ddof=1) + weight.mean()
    out = weight.copy()
    if axis == 0:
        out[chosen, :] = fresh
    else:
        out[:, chosen] = fresh
    return out


def noise(weight: np.ndarray, expert: int, layer: int, projection: str, seed: int, scale: float) -> np.ndarray:
    """A copy plus Gaussian noise of std scale x the dense matrix's std."""
    return weight + normal(weight.shape, "noise", seed, layer, expert, projection) * (scale * weight.std(ddof=1))


def split_down(weight: np.ndarray, expert: int, experts: int, neurons: tuple[int, ...] | None = None) -> np.ndarray:
    """Expert e's columns of the dense down projection (contiguous, or the `neurons` of its cluster), times
    E: its routing weight is 1/E when all E experts are active, so their sum is the dense MLP (exactly
    where E is a power of two)."""
    if neurons is not None:
        return weight[:, list(neurons)] * experts
    size = weight.shape[1] // experts
    return weight[:, expert * size : (expert + 1) * size] * experts


def split_rows(weight: np.ndarray, neurons: tuple[int, ...]) -> np.ndarray:
    """The rows of gate or up for a cluster's neurons (--calibration)."""
    return weight[list(neurons), :]


OPERATORS = {
    "moe_router": router,
    "moe_shared_gate": shared_gate,
    "moe_drop": drop,
    "moe_noise": noise,
    "moe_split_down": split_down,
    "moe_split_rows": split_rows,
}


def values(op: str, inputs: list[np.ndarray], params: dict) -> np.ndarray:
    return OPERATORS[op](*inputs, **params)


def _register(name: str) -> None:
    @register_bytes(name)
    def write(spec) -> bytes:
        computed = spec.computed
        return float_bytes(values(name, [decode(i) for i in computed.inputs], dict(computed.params)), spec.dtype)

    @register(name)
    def as_tensor(inputs, **params):
        import torch

        arrays = [t.to(torch.float64).numpy() for t in inputs]
        return torch.from_numpy(np.ascontiguousarray(values(name, arrays, params)).astype(np.float32))


for _name in OPERATORS:
    _register(_name)
