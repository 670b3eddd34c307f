"""Scaled repeats: a plan whose repeated layers add their outputs to the residual stream scaled by a factor.

A layer that runs a second time adds its attention and MLP outputs to the residual stream once more;
multiplying those outputs (the output projections, as `expand` finds them, or `--scale-modules`) by a
factor below one tempers the repeat: mergekit #198's hand tuning, which `dus scan --scale F` automates for
its best plans. A variant is the recipe `dus build --config` builds (the repeated positions' entries carry
`scale: {modules, factor}`), and the scan runs exactly the tensors that build writes: dus.plan resolves
the recipe, the build's own code computes each scaled tensor (rounded once to the output dtype), and the
runner swaps them into the source layer while it runs at a repeated position.
"""

from __future__ import annotations

import math

from dus.errors import InputError


def factors(values: list[str]) -> list[float]:
    """--scale values: positive, finite, not 1 (the plan itself), each once."""
    out = []
    for value in values:
        try:
            factor = float(value)
        except ValueError:
            raise InputError(f"--scale {value!r} is not a number") from None
        if not math.isfinite(factor) or factor <= 0 or factor == 1:
            raise InputError(f"--scale {value}: a factor must be a positive number other than 1")
        if factor not in out:
            out.append(factor)
    return out


def modules(base, given: str | None) -> list[str]:
    """The modules a factor multiplies: --scale-modules, else the residual-output projections of the base's
    (a dus.read.source.Source) layer 0."""
    from dus.read.architecture import residual_output_modules

    if not given:
        return list(residual_output_modules(base.layer_tensors[0]))
    from dus.plan.model import Edit

    names = [m.strip() for m in given.split(",") if m.strip()]
    suffixes = list(base.layer_tensors[0])
    for name in names:  # checked now, before the scan, as the build checks each layer's edits
        if not any(Edit("scale", (name,)).matches(suffix) for suffix in suffixes):
            present = ", ".join(sorted({suffix.rsplit(".", 1)[0] for suffix in suffixes}))
            raise InputError(f"--scale-modules: no module {name!r} in the layers (they have {present})")
    return names


def repeated(plan: tuple[int, ...]) -> list[int]:
    """Output positions whose source layer already ran earlier in the plan."""
    return [p for p, layer in enumerate(plan) if layer in plan[:p]]


def recipe_layers(plan: tuple[int, ...], factor: float, names: list[str]) -> list[dict]:
    """The plan as recipe entries: runs of copies as ranges, each repeated position scaled."""
    again, entries = set(repeated(plan)), []
    for p, layer in enumerate(plan):
        if p in again:
            entries.append({"layer": layer, "scale": {"modules": list(names), "factor": factor}})
        elif entries and "range" in entries[-1] and entries[-1]["range"][1] == layer:
            entries[-1]["range"][1] = layer + 1
        else:
            entries.append({"range": [layer, layer + 1]})
    return entries


def recipe_text(source: str, plan: tuple[int, ...], factor: float, names: list[str]) -> str:
    """A recipe file for `dus build --config`."""
    import yaml

    recipe = {"source": source, "layers": recipe_layers(plan, factor, names)}
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)


def weights(source: str, plan: tuple[int, ...], factor: float, names: list[str], dtype, device) -> dict:
    """{output position: {parameter name within the layer: tensor}}: the scaled tensors `dus build` writes for
    the recipe, as the built model loads them (`dtype`, `device`)."""
    import torch

    from dus.api import plan as resolve
    from dus.read.architecture import split_layer_name
    from dus.write.compute import tensor_bytes, torch_dtype

    resolved = resolve(source, layers=recipe_layers(plan, factor, names))
    prefix = resolved.sources[resolved.plan.base].layer_prefix
    out: dict[int, dict] = {}
    for spec in resolved.tensors:
        where = split_layer_name(spec.name, prefix)
        if where is None or spec.factor == 1.0:
            continue
        raw = bytearray(tensor_bytes(spec))
        tensor = torch.frombuffer(raw, dtype=torch_dtype(spec.dtype)).reshape(spec.shape)
        out.setdefault(where[0], {})[where[1]] = tensor.to(dtype=dtype, device=device)
    return out
