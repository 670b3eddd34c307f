"""What `dus plan` prints beyond the counts: the dtype it resolved, the config values a preset or recipe
sets, and a repeating layer map (stack, interleave) as its pattern rather than one line per layer."""

from __future__ import annotations

from collections import Counter

from dus.read.safetensors import TORCH_NAMES


def resolved_dtype(resolved) -> str:
    """The output's dtype as built: the largest share of its bytes (`auto` keeps each source tensor's)."""
    weights = Counter()
    for spec in resolved.tensors:
        weights[spec.dtype] += spec.parts[0][0].nbytes if spec.parts else 0
    if not weights:
        return resolved.plan.dtype
    code = weights.most_common(1)[0][0]
    return TORCH_NAMES.get(code, code)


def dtype_text(resolved) -> str:
    name = resolved_dtype(resolved)
    return f"{name} (auto: the source's)" if resolved.plan.dtype == "auto" else name


def overrides_text(overrides: dict) -> str | None:
    """`config_overrides` as the plan prints them: key=value, `null` deleting the key."""
    if not overrides:
        return None
    return ", ".join(f"{k}={v!r}" if v is not None else f"{k} deleted" for k, v in overrides.items())


def repeating_pattern(layers) -> str | None:
    """A stack or interleave map in one line; None when the map is not one of these repeats."""
    if not layers or any(len(l.inputs) > 1 or l.edits or l.source != layers[0].source for l in layers):
        return None
    indices, source = [l.source_layer for l in layers], layers[0].source
    first, count = indices[0], len(indices)
    repeat = next(
        (
            k
            for k in range(2, count + 1)
            if count % k == 0 and indices == [first + i for i in range(count // k) for _ in range(k)]
        ),
        None,
    )
    if repeat:  # interleave: each layer `repeat` times in place
        last = first + count // repeat - 1
        return (
            f"0-{count - 1}  <-  {source} {first}-{last}, each layer {repeat} times in place "
            f"({first},{first},...,{last},{last})"
            if repeat == 2
            else f"0-{count - 1}  <-  {source} {first}-{last}, each layer {repeat} times in place"
        )
    period = next(
        (
            p
            for p in range(2, count // 2 + 1)
            if count % p == 0 and indices == indices[:p] * (count // p) and indices[:p] == list(range(first, first + p))
        ),
        None,
    )
    if period:  # stack: the whole run of layers repeated
        times = count // period
        rule = f" (output layer i <- {source} layer i mod {period})" if first == 0 else ""
        return f"0-{count - 1}  <-  {source} {first}-{first + period - 1}, the whole run {times} times{rule}"
    return None
