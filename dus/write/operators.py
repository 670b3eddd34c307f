"""Operators that compute an output tensor from input tensors (width growth, routers, initialisers).

An operator is a deterministic function `(inputs: list[Tensor], **params) -> Tensor`, registered
under a name that `Computed.op` records; the build and `dus verify` both call it, so verify
recomputes every computed tensor from the same inputs and parameters. Modules that define
operators are listed in OPERATOR_MODULES and imported on first use (keeps torch off the copy path).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

OPERATOR_MODULES: tuple[str, ...] = ("dus.write.ops_width", "dus.write.ops_init", "dus.write.ops_moe")
# Operators that also write their output bytes without torch, `(spec) -> bytes`: the build and verify
# use these first, so a plan whose computed tensors all have one (an upcycled MoE) never imports torch.
BYTES_OPERATOR_MODULES: tuple[str, ...] = ("dus.write.ops_moe",)
_REGISTRY: dict[str, Callable] = {}
_BYTES: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"operator {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return add


def operator(name: str) -> Callable:
    if name not in _REGISTRY:
        for module in OPERATOR_MODULES:
            importlib.import_module(module)
    if name not in _REGISTRY:
        raise KeyError(f"no tensor operator named {name!r}")
    return _REGISTRY[name]


def register_bytes(name: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        _BYTES[name] = fn
        return fn

    return add


def bytes_operator(name: str) -> Callable | None:
    """The torch-free `(spec) -> bytes` form of an operator, or None."""
    if name not in _BYTES:
        for module in BYTES_OPERATOR_MODULES:
            importlib.import_module(module)
    return _BYTES.get(name)
