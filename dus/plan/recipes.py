"""Recipes: functions from a source layer count n to an ordered list of output layers.

Each is the layer map of a published growth operator; `docs/recipes.md` gives
the papers. Indices are validated here so a bad plan never reaches the writer.
"""

from __future__ import annotations

from dus.errors import InputError
from dus.plan.model import Edit, LayerRef, OutputLayer, copy_of
from dus.plan.recipe_options import check_dus_grows


def parse_layer_spec(spec: str, n: int) -> list[int]:
    """'0:24,8:32' or '0:8,7,7,8:16' -> source layer indices (half-open ranges)."""
    indices: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            raise InputError(f"empty item in layer spec {spec!r}")
        try:
            if ":" in part:
                start_s, stop_s = part.split(":")
                start = int(start_s) if start_s else 0
                stop = int(stop_s) if stop_s else n
                if stop <= start:
                    raise InputError(f"layer range {part!r} is empty (stop must be greater than start)")
                if start < 0 or stop > n:
                    raise InputError(
                        f"layer range {part!r} is out of range: valid layers are 0..{n - 1} (ranges {0}:{n})"
                    )
                indices.extend(range(start, stop))
            else:
                index = int(part)
                if not 0 <= index < n:
                    raise InputError(f"layer {index} is out of range: valid layers are 0..{n - 1}")
                indices.append(index)
        except ValueError:
            raise InputError(f"cannot parse {part!r} in layer spec {spec!r}: use e.g. 0:24,8:32 or 0:8,7,7") from None
    return indices


def dus(n: int, overlap: int = 8) -> list[OutputLayer]:
    """SOLAR depth up-scaling: layers [0, n-m) then [m, n)."""
    if overlap < 0:
        raise InputError(f"--overlap must be >= 0, got {overlap}")
    if overlap >= n:
        raise InputError(f"--overlap {overlap} leaves nothing of a {n}-layer copy: use 0..{n - 1}")
    check_dus_grows(n, overlap)
    return _copies(list(range(n - overlap)) + list(range(overlap, n)))


def stack(n: int, factor: int = 2) -> list[OutputLayer]:
    """G_stack (Du et al. 2024): the whole stack repeated `factor` times."""
    _check_factor(factor, "factor")
    return _copies(list(range(n)) * factor)


def interleave(n: int, factor: int = 2) -> list[OutputLayer]:
    """Each layer repeated `factor` times in place: 0,0,1,1,..."""
    _check_factor(factor, "factor")
    return _copies([i for i in range(n) for _ in range(factor)])


def idus(n: int, group: int = 8) -> list[OutputLayer]:
    """Interlocked DUS: groups of `group` layers, first and last once, middle ones twice."""
    if group < 1 or n % group != 0 or n // group < 2:
        raise InputError(f"--group {group} must divide the {n} layers into at least 2 equal groups")
    groups = [list(range(g, g + group)) for g in range(0, n, group)]
    order = groups[0] + [i for g in groups[1:-1] for i in g + g] + groups[-1]
    return _copies(order)


def expand(n: int, new_layers: int, residual_modules: tuple[str, ...]) -> list[OutputLayer]:
    """LLaMA-Pro block expansion: after every n/K layers, a copy of the preceding
    layer with its residual-output projections zeroed (an identity block)."""
    if new_layers < 1 or n % new_layers != 0:
        raise InputError(f"--new-layers {new_layers} must divide the {n} layers evenly")
    if not residual_modules:
        raise InputError("cannot find the residual-output projections of this architecture to zero")
    every = n // new_layers
    zero = Edit("zero", tuple(residual_modules))
    layers: list[OutputLayer] = []
    for i in range(n):
        layers.append(copy_of(i))
        if (i + 1) % every == 0:
            layers.append(OutputLayer((LayerRef(i),), (zero,), new=True))
    return layers


def _copies(indices: list[int]) -> list[OutputLayer]:
    return [copy_of(i) for i in indices]


def _check_factor(value: int, name: str) -> None:
    if value < 1:
        raise InputError(f"--{name} must be >= 1, got {value}")
