"""Sparse upcycling: each decoder layer's dense MLP grown into E experts and a router (dense -> MoE).

The family table says which mixture-of-experts architecture transformers has for a dense family,
how its config and its Hub checkpoints' per-expert tensors are named, and which dense config
fields must hold for the MoE to compute the dense layer; a family not in it is refused with the
reason. `moe_config` rewrites the (depth-planned) dense config; `upcycled_layers` replaces each
output layer's MLP tensors by the router and experts of the chosen initialisation:

- copy: every expert a copy of the dense MLP, the router seeded N(0, router_std). The routing
  weights of the chosen experts sum to one (top-k normalised), so the MoE computes the dense MLP
  for any router (up to float rounding of that sum).
- drop (Drop-Upcycling, Nakamura et al., ICLR 2025): copy, then a fraction `drop_ratio` of each
  expert's intermediate neurons (rows of gate/up, columns of down) re-drawn from N(mean, std) of
  the dense matrix, seeded. The function is not preserved.
- split (MoEfication, Zhang et al. 2022; LLaMA-MoE, Zhu et al. 2024): the intermediate neurons
  partitioned into E contiguous experts, down scaled by E, the router zero: with all experts
  active (top-k = E) each routing weight is 1/E and the MoE computes the dense MLP.
- noise: copy plus seeded Gaussian noise of std `noise_scale` x the dense matrix's std on every
  expert (Komatsuzaki et al., Sparse Upcycling, 2023, break expert symmetry the same way).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from dus.errors import InputError
from dus.plan.layout import Computed, TensorSpec
from dus.plan.moe_family import PROJECTIONS, Family, family_of_target, mlp_suffixes, upcycle_settings
from dus.read.architecture import split_layer_name
from dus.read.safetensors import DTYPE_BITS, TensorInfo


def upcycled(tensors: list[TensorSpec], plan, sources: dict) -> list[TensorSpec]:
    """The plan's output tensors (dus/plan/tensors.py) with each layer's MLP made experts when it upcycles."""
    if not plan.moe:
        return tensors
    base = sources[plan.base]
    in_layers = [i for i, s in enumerate(tensors) if split_layer_name(s.name, base.layer_prefix) is not None]
    first, last = in_layers[0], in_layers[-1] + 1  # layout puts the decoder layers together
    sources_of = [layer.source_layer for layer in plan.layers]
    return (
        tensors[:first] + upcycled_layers(plan.moe, base.layer_prefix, tensors[first:last], sources_of) + tensors[last:]
    )


def upcycled_layers(moe: dict, prefix: str, specs: list[TensorSpec], sources_of: list[int]) -> list[TensorSpec]:
    """Layer tensors in order, each output layer's MLP replaced (in place) by its router and experts."""
    family = family_of_target(moe)
    out: list[TensorSpec] = []
    by_layer: dict[int, dict[str, TensorSpec]] = {}
    for spec in specs:
        index, suffix = split_layer_name(spec.name, prefix)
        by_layer.setdefault(index, {})[suffix] = spec
    for index, layer in by_layer.items():
        mlp = mlp_suffixes(dict.fromkeys(layer))
        dense = {p: layer[s] for p, s in mlp.items()}
        for suffix, spec in layer.items():
            if suffix == mlp["gate_proj"]:
                out.extend(_moe_block(moe, family, f"{prefix}{index}.", index, dense, sources_of[index]))
            elif suffix not in mlp.values():
                out.append(spec)
    return out


def _moe_block(
    moe: dict, family: Family, layer: str, index: int, dense: dict[str, TensorSpec], source_layer: int
) -> list[TensorSpec]:
    init, experts = moe["init"], moe["experts"]
    if init != "copy":
        for spec in dense.values():
            if spec.computed is not None or len(spec.parts) != 1 or spec.parts[0][1] != 1.0 or spec.factor != 1.0:
                raise InputError(
                    f"--expert-init {init} needs the dense MLP of output layer {index} as a plain copy; "
                    "it is a blend, scale or zero (use --expert-init copy)"
                )
    block = f"{layer}{family.block}."
    gate = dense["gate_proj"]
    hidden = gate.shape[1]
    router_name = f"{block}{family.router}.weight"
    if init == "split":
        tensors = [TensorSpec(router_name, gate.dtype, (experts, hidden), ())]  # zero: every weight 1/E
    else:
        params = (
            ("experts", experts),
            ("hidden", hidden),
            ("layer", index),
            ("seed", moe["seed"]),
            ("std", moe["router_std"]),
        )
        router = Computed("moe_router", (), params)
        tensors = [TensorSpec(router_name, gate.dtype, (experts, hidden), (), computed=router)]
    for e in range(experts):
        for projection, name in zip(PROJECTIONS, family.expert_names):
            spec = _expert(moe, dense[projection], projection, index, e, source_layer)
            tensors.append(dataclasses.replace(spec, name=f"{block}experts.{e}.{name}.weight"))
    if family.shared:  # the MoE adds (a gate times) a shared expert: its down projection zero makes that zero
        for projection in PROJECTIONS:
            spec = dense[projection]
            if projection == "down_proj":
                spec = dataclasses.replace(spec, parts=(), computed=None)
            tensors.append(dataclasses.replace(spec, name=f"{block}{family.shared}.{projection}.weight"))
    if family.shared_gate:  # any gate keeps the function (the shared expert adds zero); not zero, which
        # llama.cpp's sigmoid, silu(x) / x, turns into 0 / 0
        params = (("hidden", hidden), ("layer", index), ("seed", moe["seed"]), ("std", moe["router_std"]))
        shared_gate = Computed("moe_shared_gate", (), params)
        tensors.append(
            TensorSpec(f"{block}{family.shared_gate}.weight", gate.dtype, (1, hidden), (), computed=shared_gate)
        )
    return tensors


def _expert(moe: dict, dense: TensorSpec, projection: str, layer: int, expert: int, source_layer: int) -> TensorSpec:
    init = moe["init"]
    if init == "copy":
        return dense  # the same bytes: a byte copy where the dtype is kept
    info = dense.parts[0][0]
    axis = 1 if projection == "down_proj" else 0  # the intermediate neurons: columns of down, rows of gate/up
    if init == "split" and "clusters" in moe:  # --calibration: the neurons that fire together
        cluster = moe["clusters"][str(source_layer)]
        neurons = tuple(i for i, c in enumerate(cluster) if c == expert)
        shape = list(info.shape)
        shape[axis] = len(neurons)
        op, params = (
            ("moe_split_down", (("expert", expert), ("experts", moe["experts"]), ("neurons", neurons)))
            if axis == 1
            else ("moe_split_rows", (("neurons", neurons),))
        )
        return dataclasses.replace(dense, shape=tuple(shape), computed=Computed(op, (info,), params))
    if init == "split":
        return _split(dense, info, axis, expert, moe["experts"])
    where = (("expert", expert), ("layer", layer), ("projection", projection), ("seed", moe["seed"]))
    if init == "drop":
        params = (("axis", axis), *where, ("ratio", moe["drop_ratio"]))
        return dataclasses.replace(dense, computed=Computed("moe_drop", (info,), params))
    params = (*where, ("scale", moe["noise_scale"]))
    return dataclasses.replace(dense, computed=Computed("moe_noise", (info,), params))


def _split(dense: TensorSpec, info: TensorInfo, axis: int, expert: int, experts: int) -> TensorSpec:
    """Expert e's share of the intermediate neurons: rows of gate/up (a byte range of the source, so a
    byte copy), columns of down times E (computed: the routing weights are 1/E)."""
    shape = list(info.shape)
    size = shape[axis] // experts
    shape[axis] = size
    if axis == 0:
        row_bytes = shape[1] * DTYPE_BITS[info.dtype] // 8
        start = info.start + expert * size * row_bytes
        part = TensorInfo(info.path, info.dtype, tuple(shape), start, start + size * row_bytes)
        return dataclasses.replace(dense, shape=tuple(shape), parts=((part, 1.0),))
    params = (("expert", expert), ("experts", experts))
    return dataclasses.replace(dense, shape=tuple(shape), computed=Computed("moe_split_down", (info,), params))


def parameter_counts(moe: dict, specs: list[TensorSpec]) -> dict:
    """Total parameters, and those one token uses (the routed experts count top_k / experts)."""

    def count(spec: TensorSpec) -> int:
        return math.prod(spec.shape)

    marker = "_exps." if moe.get("format") == "gguf" else f".{family_of_target(moe).block}.experts."
    total = sum(count(s) for s in specs)
    routed = sum(count(s) for s in specs if marker in s.name)
    return {"total_parameters": total, "active_parameters": total - routed + routed * moe["top_k"] // moe["experts"]}


def upcycle_plan(plan, base, options: dict) -> None:
    """Give a (depth) plan over its base Source the `moe` entry that makes its MLPs experts."""
    if getattr(base, "files", None) is not None:  # a GGUFSource
        from dus.plan.upcycle_gguf import gguf_settings

        plan.moe = gguf_settings(options, base)
        return
    if base.stack_config:
        raise InputError("upcycling grows a text model's MLPs; a multimodal checkpoint's stack is not supported")
    from dus.plan.config import apply_overrides

    config = apply_overrides(base.config, plan.config_overrides)
    plan.moe = upcycle_settings(options, config, base.layer_tensors[0])
    if options.get("calibration"):
        from dus.plan.upcycle_calibrate import neuron_clusters

        if base.directory is None:
            raise InputError("--calibration runs the dense model: give a model directory or Hub id, not a config")
        layers = [layer.source_layer for layer in plan.layers]
        plan.moe["calibration"] = str(Path(options["calibration"]).expanduser().resolve())
        plan.moe["clusters"] = neuron_clusters(
            str(base.directory), options["calibration"], plan.moe["experts"], layers, plan.moe["seed"]
        )


def provenance(specs: list[TensorSpec], sources: dict) -> dict[str, dict]:
    """tensor name -> where it comes from: {"copy": source tensor (, "rows": [a, b])}, {"zero": true},
    {"blend": [[tensor, weight], ...], "factor": f}, or {"op", "inputs", "params"} when computed."""
    where = {}
    for source in sources.values():
        for name, info in source.tensors.items():
            where.setdefault(info.path, []).append((info.start, info.end, name, info))

    def named(info: TensorInfo) -> str:
        return next(n for start, end, n, _ in where[info.path] if start <= info.start and info.end <= end)

    out = {}
    for spec in specs:
        if spec.computed is not None:
            c = spec.computed
            out[spec.name] = {"op": c.op, "inputs": [named(i) for i in c.inputs], "params": dict(c.params)}
        elif not spec.parts:
            out[spec.name] = {"zero": True}
        elif len(spec.parts) == 1 and spec.factor == 1.0:
            info = spec.parts[0][0]
            entry = {"copy": named(info)}
            whole = next(i for start, _, _, i in where[info.path] if start <= info.start and info.end <= i.end)
            if info != whole:  # a slice of rows (split): which rows of the source tensor
                row = whole.nbytes // whole.shape[0]
                entry["rows"] = [(info.start - whole.start) // row, (info.end - whole.start) // row]
            out[spec.name] = entry
        else:
            out[spec.name] = {"blend": [[named(i), w] for i, w in spec.parts], "factor": spec.factor}
    return out


def describe(moe: dict, specs: list[TensorSpec], layer_prefix: str) -> dict:
    """The `moe` entry of `dus plan --json` and of the record: settings, layout, parameter counts."""
    if moe.get("format") == "gguf":
        return {
            **moe,
            "layout": {
                "router": f"{layer_prefix}N.ffn_gate_inp.weight (F32, zero)",
                "experts": f"{layer_prefix}N.ffn_{{gate,up,down}}_exps.weight ({moe['experts']} "
                "stacked byte copies of the dense tensor)",
            },
            **parameter_counts(moe, specs),
        }
    family = family_of_target(moe)
    block = f"{layer_prefix}N.{family.block}."
    layout = {
        "router": f"{block}{family.router}.weight",
        "experts": f"{block}experts.{{0..{moe['experts'] - 1}}}.{{{','.join(family.expert_names)}}}.weight",
    }
    if family.shared:
        layout["shared_expert"] = f"{block}{family.shared}.{{gate_proj,up_proj,down_proj}}.weight (down zero)" + (
            f", {block}{family.shared_gate}.weight (seeded N(0, router_std))" if family.shared_gate else ""
        )
    return {**moe, "layout": layout, **parameter_counts(moe, specs)}


def summary_lines(info: dict) -> list[str]:
    """`dus plan`'s lines for an upcycled plan."""
    seed = info.get("seed", "-")
    return [
        f"experts:     {info['experts']} per layer, top-{info['top_k']}, init {info['init']} (seed {seed}), "
        f"{info['family']} ({info['architecture']}); function preserved: {info['function_preserved']}",
        f"parameters:  {info['active_parameters']:,} active of {info['total_parameters']:,} total",
        f"router:      {info['layout']['router']}",
        f"experts at:  {info['layout']['experts']}",
        *([f"shared:      {info['layout']['shared_expert']}"] if "shared_expert" in info["layout"] else []),
    ]
