"""The seeded router of sparse upcycling, computed without torch (the copy path stays torch-free).

Values are N(0, std) draws made only of operations whose results IEEE arithmetic fixes: a PCG64 bit
stream (numpy guarantees BitGenerator streams across versions), 53-bit uniforms, and Irwin-Hall's
sum of 12 uniforms minus 6 (mean 0, variance 1, tails cut at 6 sigma), added one at a time in a fixed
order; no transcendental function whose last bit a platform may round differently. `dus verify`
recomputes the same bytes anywhere.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dus.write.operators import register, register_bytes


def router_values(experts: int, hidden: int, layer: int, seed: int, std: float) -> np.ndarray:
    digest = hashlib.blake2b(repr(("router", seed, layer)).encode(), digest_size=8).digest()
    raw = np.random.PCG64(int.from_bytes(digest, "little")).random_raw(12 * experts * hidden)
    uniforms = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    uniforms = uniforms.reshape(12, experts, hidden)
    total = uniforms[0].copy()
    for part in uniforms[1:]:
        total += part
    return ((total - 6.0) * std).astype(np.float32)


def float_bytes(values: np.ndarray, dtype: str) -> bytes:
    """float32 values as little-endian `dtype` bytes (bfloat16 rounded to nearest even, as torch does)."""
    if dtype == "BF16":
        bits = values.astype("<f4").view("<u4").astype(np.uint64)
        rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
        return rounded.astype("<u2").tobytes()
    codes = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
    if dtype not in codes:
        raise ValueError(f"a router is a float tensor, not {dtype}")
    return values.astype(codes[dtype]).tobytes()


@register_bytes("moe_router")
def router_bytes(spec) -> bytes:
    return float_bytes(router_values(**dict(spec.computed.params)), spec.dtype)


@register("moe_router")
def router(inputs, *, experts: int, hidden: int, layer: int, seed: int, std: float):
    """The same values as a torch tensor (for callers of dus.write.compute.compute_tensor)."""
    import torch

    return torch.from_numpy(router_values(experts, hidden, layer, seed, std))
