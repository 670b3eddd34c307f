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
from dataclasses import dataclass

from dus.errors import InputError
from dus.plan.layout import Computed, TensorSpec
from dus.read.architecture import split_layer_name
from dus.read.safetensors import DTYPE_BITS, TensorInfo

INITS = ("copy", "drop", "split", "noise")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # the dense MLP every supported family has
FUNCTION_PRESERVED = {"copy": "yes", "split": "with all experts active (top-k = E)", "drop": "no", "noise": "no"}
METADATA_KEYS = {"architectures", "model_type"}


@dataclass(frozen=True)
class Family:
    """One dense -> MoE pair of transformers architectures, as their released checkpoints name things."""

    target: str                        # the MoE model_type
    architecture: str
    block: str                         # the MoE module of a layer: its router is `{block}.gate`
    expert_names: tuple[str, str, str]  # gate, up, down of expert e: `{block}.experts.{e}.{name}.weight`
    experts_key: str                   # config: number of experts
    size_key: str                      # config: an expert's intermediate size
    fixed: tuple[tuple[str, object], ...] = ()  # MoE config fields with the values upcycling needs
    must: tuple[tuple[str, object], ...] = ()   # dense fields that must have this value (or be absent)
    dropped: tuple[str, ...] = ()      # dense-only fields, removed once `must` holds
    shared_expert: bool = False        # Qwen2-MoE: a shared expert beside the routed ones
    norm_topk: str = "always"          # how its routing weights sum to one: "always" or norm_topk_prob


_QWEN_MOE = (("decoder_sparse_step", 1), ("mlp_only_layers", []), ("norm_topk_prob", True))
FAMILIES: dict[str, Family] = {
    "llama": Family("mixtral", "MixtralForCausalLM", "block_sparse_moe", ("w1", "w3", "w2"), "num_local_experts",
                    "intermediate_size", must=(("attention_bias", False), ("mlp_bias", False), ("pretraining_tp", 1)),
                    dropped=("attention_bias", "mlp_bias", "pretraining_tp")),
    "mistral": Family("mixtral", "MixtralForCausalLM", "block_sparse_moe", ("w1", "w3", "w2"), "num_local_experts",
                      "intermediate_size"),
    "qwen2": Family("qwen2_moe", "Qwen2MoeForCausalLM", "mlp", PROJECTIONS, "num_experts", "moe_intermediate_size",
                    fixed=_QWEN_MOE, shared_expert=True, norm_topk="norm_topk_prob"),
    "qwen3": Family("qwen3_moe", "Qwen3MoeForCausalLM", "mlp", PROJECTIONS, "num_experts", "moe_intermediate_size",
                    fixed=_QWEN_MOE, must=(("use_sliding_window", False),),
                    dropped=("layer_types", "max_window_layers"), norm_topk="norm_topk_prob"),
    "olmo2": Family("flex_olmo", "FlexOlmoForCausalLM", "mlp", PROJECTIONS, "num_experts", "intermediate_size",
                    fixed=(("norm_topk_prob", True),), norm_topk="norm_topk_prob"),
}
# Dense families with an MoE relative in transformers that does not compute their layers.
REFUSED: dict[str, str] = {
    "olmo": "OLMo normalises with a parameter-free LayerNorm and clips QKV; OLMoE normalises with weighted RMSNorm "
            "and q/k norms, so no OLMoE layer computes an OLMo layer",
    "olmo3": "OLMo-3 interleaves sliding-window layers; FlexOlmo and OLMoE have no sliding window",
    "phi3": "PhiMoE routes with sparsemixer, whose weights do not sum to one, and normalises with LayerNorm "
            "(Phi-3 uses RMSNorm)",
    "granite": "GraniteMoE's released checkpoints store experts fused (input_linear/output_linear), "
               "not per expert, and it has no normalised top-k flag to make copies exact: not supported yet",
}
MOE_TYPES = {f.target for f in FAMILIES.values()} | {"olmoe", "phimoe", "granitemoe", "deepseek_v3", "qwen3_next"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def family_of(config: dict) -> Family:
    """The MoE family of a dense config, or the reason there is none."""
    model_type = config.get("model_type", "")
    if model_type in MOE_TYPES or any(isinstance(config.get(k), int) and config[k] > 0 for k in MOE_KEYS):
        raise InputError(f"the source is already a mixture of experts ({model_type}): upcycling grows a dense model; "
                         "growing an MoE's expert count is not supported")
    if model_type in REFUSED:
        raise InputError(f"cannot upcycle {model_type}: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise InputError(f"cannot upcycle {model_type or 'this model'}: transformers defines no mixture-of-experts "
                         f"architecture for it that dus knows (supported: {', '.join(FAMILIES)}; docs/upcycle.md)")
    family = FAMILIES[model_type]
    for key, want in family.must:
        if config.get(key, want) != want:
            raise InputError(f"cannot upcycle this {model_type} into {family.target}: its config has {key} = "
                             f"{config[key]!r}, which {family.target} cannot express (it needs {want!r})")
    return family


def upcycle_settings(options: dict, config: dict, layer_tensors: dict[str, str]) -> dict:
    """The plan's `moe` entry from the options (experts, top_k, expert_init, ...), checked."""
    family = family_of(config)
    experts, top_k = options.get("experts"), options.get("top_k")
    init = options.get("expert_init") or "copy"
    if not isinstance(experts, int) or experts < 2:
        raise InputError(f"--experts must be at least 2, got {experts!r}")
    if top_k is None:
        top_k = min(2, experts)
    if not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise InputError(f"--top-k must be between 1 and the number of experts ({experts}), got {top_k!r}")
    if init not in INITS:
        raise InputError(f"unknown expert initialisation {init!r} (known: {', '.join(INITS)})")
    mlp_suffixes(layer_tensors)  # a recognisable MLP, or the refusal
    settings = {"family": family.target, "architecture": family.architecture, "experts": experts, "top_k": top_k,
                "init": init, "seed": int(options.get("expert_seed") or 0),
                "router_std": float(options.get("router_std") or config.get("initializer_range") or 0.02),
                "function_preserved": FUNCTION_PRESERVED[init]}
    if init == "drop":
        ratio = float(options.get("drop_ratio") if options.get("drop_ratio") is not None else 0.5)
        if not 0.0 < ratio <= 1.0:
            raise InputError(f"--drop-ratio must be in (0, 1], got {ratio}")
        settings["drop_ratio"] = ratio
    if init == "noise":
        scale = float(options.get("noise_scale") if options.get("noise_scale") is not None else 0.01)
        if not scale > 0.0:
            raise InputError(f"--noise-scale must be positive, got {scale}")
        settings["noise_scale"] = scale
    if init == "split" and config.get("intermediate_size", 0) % experts:
        raise InputError(f"--expert-init split partitions the {config.get('intermediate_size')} intermediate neurons "
                         f"into {experts} equal experts: choose an expert count that divides it")
    return settings


def mlp_suffixes(layer_tensors: dict[str, str]) -> dict[str, str]:
    """projection -> layer tensor suffix of the dense MLP (mlp.gate_proj.weight, ...), or the refusal."""
    found = {p: f"mlp.{p}.weight" for p in PROJECTIONS if f"mlp.{p}.weight" in layer_tensors}
    others = sorted(s for s in layer_tensors if s.startswith("mlp.") and s not in found.values())
    if len(found) != len(PROJECTIONS) or others:
        raise InputError("no recognisable gated MLP (mlp.gate_proj, mlp.up_proj, mlp.down_proj weights and nothing "
                         f"else) in the source's layers: it has {', '.join(sorted(layer_tensors)) or 'no tensors'}")
    return found


def moe_config(dense: dict, moe: dict) -> dict:
    """The MoE config of a (depth-planned) dense config."""
    family = family_of(dense)
    out = {k: v for k, v in dense.items() if k not in family.dropped}
    size = dense["intermediate_size"] // (moe["experts"] if moe["init"] == "split" else 1)
    out.update(model_type=family.target, architectures=[family.architecture], num_experts_per_tok=moe["top_k"],
               output_router_logits=False, router_aux_loss_coef=float(moe.get("router_aux_loss_coef", 0.001)))
    out[family.experts_key] = moe["experts"]
    out[family.size_key] = size
    out.update(dict(family.fixed))
    if family.shared_expert:
        out["shared_expert_intermediate_size"] = dense["intermediate_size"]
    if family.target == "mixtral":
        out["router_jitter_noise"] = 0.0
    return out


def upcycled_layers(moe: dict, config: dict, prefix: str, specs: list[TensorSpec]) -> list[TensorSpec]:
    """Layer tensors in order, each output layer's MLP replaced (in place) by its router and experts."""
    family = family_of(config)
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
                out.extend(_moe_block(moe, family, f"{prefix}{index}.", index, dense))
            elif suffix not in mlp.values():
                out.append(spec)
    return out


def _moe_block(moe: dict, family: Family, layer: str, index: int, dense: dict[str, TensorSpec]) -> list[TensorSpec]:
    init, experts = moe["init"], moe["experts"]
    if init != "copy":
        for spec in dense.values():
            if spec.computed is not None or len(spec.parts) != 1 or spec.parts[0][1] != 1.0 or spec.factor != 1.0:
                raise InputError(f"--expert-init {init} needs the dense MLP of output layer {index} as a plain copy; "
                                 "it is a blend, scale or zero (use --expert-init copy)")
    block = f"{layer}{family.block}."
    gate = dense["gate_proj"]
    hidden = gate.shape[1]
    router_name = f"{block}gate.weight"
    if init == "split":
        tensors = [TensorSpec(router_name, gate.dtype, (experts, hidden), ())]  # zero: every weight 1/E
    else:
        params = (("experts", experts), ("hidden", hidden), ("layer", index), ("seed", moe["seed"]),
                  ("std", moe["router_std"]))
        tensors = [TensorSpec(router_name, gate.dtype, (experts, hidden), (), computed=Computed("moe_router", (), params))]
    for e in range(experts):
        for projection, name in zip(PROJECTIONS, family.expert_names):
            spec = _expert(moe, dense[projection], projection, index, e)
            tensors.append(dataclasses.replace(spec, name=f"{block}experts.{e}.{name}.weight"))
    if family.shared_expert:  # Qwen2-MoE adds sigmoid(gate(x)) * shared(x): down zero makes that term zero
        for projection in PROJECTIONS:
            spec = dense[projection]
            if projection == "down_proj":
                spec = dataclasses.replace(spec, parts=(), computed=None)
            tensors.append(dataclasses.replace(spec, name=f"{block}shared_expert.{projection}.weight"))
        tensors.append(TensorSpec(f"{block}shared_expert_gate.weight", gate.dtype, (1, hidden), ()))
    return tensors


def _expert(moe: dict, dense: TensorSpec, projection: str, layer: int, expert: int) -> TensorSpec:
    init = moe["init"]
    if init == "copy":
        return dense  # the same bytes: a byte copy where the dtype is kept
    info = dense.parts[0][0]
    axis = 1 if projection == "down_proj" else 0  # the intermediate neurons: columns of down, rows of gate/up
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


def family_of_target(moe: dict) -> Family:
    return next(f for f in FAMILIES.values() if f.target == moe["family"])


def parameter_counts(moe: dict, specs: list[TensorSpec]) -> dict:
    """Total parameters, and those one token uses (the routed experts count top_k / experts)."""
    def count(spec: TensorSpec) -> int:
        return spec.nbytes * 8 // DTYPE_BITS[spec.dtype]

    marker = f".{family_of_target(moe).block}.experts."
    total = sum(count(s) for s in specs)
    routed = sum(count(s) for s in specs if marker in s.name)
    return {"total_parameters": total,
            "active_parameters": total - routed + routed * moe["top_k"] // moe["experts"]}


def upcycle_plan(plan, base, options: dict) -> None:
    """Give a (depth) plan over its base Source the `moe` entry that makes its MLPs experts."""
    if base.stack_config:
        raise InputError("upcycling grows a text model's MLPs; a multimodal checkpoint's stack is not supported")
    from dus.plan.config import apply_overrides

    config = apply_overrides(base.config, plan.config_overrides)
    plan.moe = upcycle_settings(options, config, base.layer_tensors[0])


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
    family = family_of_target(moe)
    block = f"{layer_prefix}N.{family.block}."
    layout = {"router": f"{block}gate.weight",
              "experts": f"{block}experts.{{0..{moe['experts'] - 1}}}.{{{','.join(family.expert_names)}}}.weight"}
    if family.shared_expert:
        layout["shared_expert"] = f"{block}shared_expert.{{gate_proj,up_proj,down_proj}}.weight (down zero), " \
                                  f"{block}shared_expert_gate.weight (zero)"
    return {**moe, "layout": layout, **parameter_counts(moe, specs)}


def summary_lines(info: dict) -> list[str]:
    """`dus plan`'s lines for an upcycled plan."""
    return [f"experts:     {info['experts']} per layer, top-{info['top_k']}, init {info['init']} (seed {info['seed']}), "
            f"{info['family']} ({info['architecture']}); function preserved: {info['function_preserved']}",
            f"parameters:  {info['active_parameters']:,} active of {info['total_parameters']:,} total",
            f"router:      {info['layout']['router']}",
            f"experts at:  {info['layout']['experts']}",
            *([f"shared:      {info['layout']['shared_expert']}"] if "shared_expert" in info["layout"] else [])]
