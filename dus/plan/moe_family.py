"""The family table of sparse upcycling (dus/plan/upcycle.py): which MoE architecture transformers has
for a dense family, how its config and its Hub checkpoints' per-expert tensors are named, which dense
config fields must hold for the MoE to compute the dense layer, and the MoE config itself. A family
not in the table is refused with the reason; docs/upcycle.md's table is generated from it."""

from __future__ import annotations

from dataclasses import dataclass

from dus.errors import InputError

INITS = ("copy", "drop", "split", "noise")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # the dense MLP every supported family has
FUNCTION_PRESERVED = {"copy": "yes", "split": "with all experts active (top-k = E)", "drop": "no", "noise": "no"}
METADATA_KEYS = {"architectures", "model_type"}


@dataclass(frozen=True)
class Family:
    """One dense -> MoE pair of transformers architectures, as their released checkpoints name things."""

    target: str  # the MoE model_type
    architecture: str
    block: str  # the MoE module of a layer: its router is `{block}.gate`
    expert_names: tuple[str, str, str]  # gate, up, down of expert e: `{block}.experts.{e}.{name}.weight`
    experts_key: str  # config: number of experts
    size_key: str  # config: an expert's intermediate size
    fixed: tuple[tuple[str, object], ...] = ()  # MoE config fields with the values upcycling needs
    must: tuple[tuple[str, object], ...] = ()  # dense fields that must have this value (or be absent)
    dropped: tuple[str, ...] = ()  # dense-only fields, removed once `must` holds
    shared: str | None = None  # a shared expert beside the routed ones: `{block}.{shared}.{proj}.weight`
    shared_gate: str | None = None  # its sigmoid gate, `{block}.{shared_gate}.weight` (Qwen2-MoE)
    shared_size_key: str | None = None  # config: the shared expert's intermediate size, if its own
    norm_topk: str = "always"  # how its routing weights sum to one: "always" or norm_topk_prob
    router: str = "gate"  # the router's module in the block
    topk_key: str = "num_experts_per_tok"
    split: bool = True  # False: experts and the shared expert share one size field
    aux_loss: bool = True  # transformers adds router_aux_loss_coef x a load-balancing loss

    @property
    def shared_expert(self) -> bool:
        return self.shared is not None


_QWEN_MOE = (("decoder_sparse_step", 1), ("mlp_only_layers", []), ("norm_topk_prob", True))
FAMILIES: dict[str, Family] = {
    "llama": Family(
        "mixtral",
        "MixtralForCausalLM",
        "block_sparse_moe",
        ("w1", "w3", "w2"),
        "num_local_experts",
        "intermediate_size",
        must=(("attention_bias", False), ("mlp_bias", False), ("pretraining_tp", 1)),
        dropped=("attention_bias", "mlp_bias", "pretraining_tp"),
    ),
    "mistral": Family(
        "mixtral",
        "MixtralForCausalLM",
        "block_sparse_moe",
        ("w1", "w3", "w2"),
        "num_local_experts",
        "intermediate_size",
    ),
    "qwen2": Family(
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        "mlp",
        PROJECTIONS,
        "num_experts",
        "moe_intermediate_size",
        fixed=_QWEN_MOE,
        shared="shared_expert",
        shared_gate="shared_expert_gate",
        shared_size_key="shared_expert_intermediate_size",
        norm_topk="norm_topk_prob",
    ),
    "qwen3": Family(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        "mlp",
        PROJECTIONS,
        "num_experts",
        "moe_intermediate_size",
        fixed=_QWEN_MOE,
        must=(("use_sliding_window", False),),
        dropped=("layer_types", "max_window_layers"),
        norm_topk="norm_topk_prob",
    ),
    "hunyuan_v1_dense": Family(
        "hunyuan_v1_moe",
        "HunYuanMoEV1ForCausalLM",
        "mlp",
        PROJECTIONS,
        "num_experts",
        "intermediate_size",
        shared="shared_mlp",
        router="gate.wg",
        topk_key="moe_topk",
        split=False,
        aux_loss=False,
    ),
    "olmo2": Family(
        "flex_olmo",
        "FlexOlmoForCausalLM",
        "mlp",
        PROJECTIONS,
        "num_experts",
        "intermediate_size",
        fixed=(("norm_topk_prob", True),),
        norm_topk="norm_topk_prob",
    ),
}
# Dense families with an MoE relative in transformers that does not compute their layers.
REFUSED: dict[str, str] = {
    "olmo": "OLMo normalises with a parameter-free LayerNorm and clips QKV; OLMoE normalises with weighted RMSNorm "
    "and q/k norms, so no OLMoE layer computes an OLMo layer",
    "olmo3": "OLMo-3 interleaves sliding-window layers; FlexOlmo and OLMoE have no sliding window",
    "phi3": "PhiMoE routes with sparsemixer, whose weights do not sum to one, and normalises with LayerNorm "
    "(Phi-3 uses RMSNorm)",
    "ernie4_5": "Ernie-4.5-MoE places experts by moe_layer_start_index/interval and adds moe_num_shared_experts "
    "shared experts of the experts' size: not supported yet",
    "exaone4": "EXAONE-MoE routes DeepSeek-style (expert groups, a routed scaling factor, a per-layer dense/sparse "
    "list): not supported yet",
    "cohere2": "Cohere2-MoE combines shared experts by a configurable strategy and keeps prefix dense layers: "
    "not supported yet",
    "granite": "GraniteMoE's released checkpoints store experts fused (input_linear/output_linear), "
    "not per expert, and it has no normalised top-k flag to make copies exact: not supported yet",
}
MOE_TYPES = {f.target for f in FAMILIES.values()} | {"olmoe", "phimoe", "granitemoe", "deepseek_v3", "qwen3_next"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def family_of(config: dict) -> Family:
    """The MoE family of a dense config, or the reason there is none."""
    model_type = config.get("model_type", "")
    if model_type in MOE_TYPES or any(isinstance(config.get(k), int) and config[k] > 0 for k in MOE_KEYS):
        raise InputError(
            f"the source is already a mixture of experts ({model_type}): upcycling grows a dense model; "
            "growing an MoE's expert count is not supported"
        )
    if model_type in REFUSED:
        raise InputError(f"cannot upcycle {model_type}: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise InputError(
            f"cannot upcycle {model_type or 'this model'}: transformers defines no mixture-of-experts "
            f"architecture for it that dus knows (supported: {', '.join(FAMILIES)}; docs/upcycle.md)"
        )
    family = FAMILIES[model_type]
    for key, want in family.must:
        if config.get(key, want) != want:
            raise InputError(
                f"cannot upcycle this {model_type} into {family.target}: its config has {key} = "
                f"{config[key]!r}, which {family.target} cannot express (it needs {want!r})"
            )
    return family


def upcycle_settings(options: dict, config: dict, layer_tensors: dict[str, str]) -> dict:
    """The plan's `moe` entry from the options (experts, top_k, expert_init, ...), checked."""
    family = family_of(config)
    experts, top_k, init = expert_counts(options)
    mlp_suffixes(layer_tensors)  # a recognisable MLP, or the refusal
    settings = {
        "family": family.target,
        "architecture": family.architecture,
        "experts": experts,
        "top_k": top_k,
        "init": init,
        "seed": int(options.get("expert_seed") or 0),
        "router_std": float(options.get("router_std") or config.get("initializer_range") or 0.02),
        "function_preserved": FUNCTION_PRESERVED[init],
    }
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
    if init == "split" and not family.split:
        raise InputError(
            f"--expert-init split needs experts smaller than the dense MLP, and {family.target}'s shared "
            "MLP has the experts' size field: use copy, drop or noise"
        )
    if init == "split" and config.get("intermediate_size", 0) % experts:
        raise InputError(
            f"--expert-init split partitions the {config.get('intermediate_size')} intermediate neurons "
            f"into {experts} equal experts: choose an expert count that divides it"
        )
    return settings


# The plan options of upcycling: any of them asks for experts.
EXPERT_OPTIONS = (
    "experts",
    "top_k",
    "expert_init",
    "expert_seed",
    "drop_ratio",
    "noise_scale",
    "router_std",
    "calibration",
)
# The options that only one initialisation reads.
INIT_OPTIONS = {"drop_ratio": "drop", "noise_scale": "noise", "calibration": "split"}


def expert_counts(options: dict) -> tuple[int, int, str]:
    """(experts, top_k, init) from the options, checked."""
    experts, top_k = options.get("experts"), options.get("top_k")
    init = options.get("expert_init") or "copy"
    if experts is None:
        given = [k for k in EXPERT_OPTIONS if options.get(k) is not None]
        raise InputError(f"--{given[0].replace('_', '-')} is an upcycling option: it needs --experts E")
    for key, wanted in INIT_OPTIONS.items():
        if options.get(key) is not None and init != wanted:
            raise InputError(f"--{key.replace('_', '-')} is for --expert-init {wanted}, not {init}")
    if not isinstance(experts, int) or experts < 2:
        raise InputError(f"--experts must be at least 2, got {experts!r}")
    if top_k is None:
        top_k = min(2, experts)
    if not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise InputError(f"--top-k must be between 1 and the number of experts ({experts}), got {top_k!r}")
    if init not in INITS:
        raise InputError(f"unknown expert initialisation {init!r} (known: {', '.join(INITS)})")
    return experts, top_k, init


def mlp_suffixes(layer_tensors: dict[str, str]) -> dict[str, str]:
    """projection -> layer tensor suffix of the dense MLP (mlp.gate_proj.weight, ...), or the refusal."""
    found = {p: f"mlp.{p}.weight" for p in PROJECTIONS if f"mlp.{p}.weight" in layer_tensors}
    others = sorted(s for s in layer_tensors if s.startswith("mlp.") and s not in found.values())
    if len(found) != len(PROJECTIONS) or others:
        raise InputError(
            "no recognisable gated MLP (mlp.gate_proj, mlp.up_proj, mlp.down_proj weights and nothing "
            f"else) in the source's layers: it has {', '.join(sorted(layer_tensors)) or 'no tensors'}"
        )
    return found


def moe_config(dense: dict, moe: dict) -> dict:
    """The MoE config of a (depth-planned) dense config."""
    family = family_of(dense)
    out = {k: v for k, v in dense.items() if k not in family.dropped}
    size = dense["intermediate_size"] // (moe["experts"] if moe["init"] == "split" else 1)
    out.update(model_type=family.target, architectures=[family.architecture])
    if family.aux_loss:
        out.update(output_router_logits=False, router_aux_loss_coef=0.001)
    out[family.topk_key] = moe["top_k"]
    out[family.experts_key] = moe["experts"]
    out[family.size_key] = size
    out.update(dict(family.fixed))
    if family.shared_size_key:
        out[family.shared_size_key] = dense["intermediate_size"]
    if family.target == "mixtral":
        out["router_jitter_noise"] = 0.0
    return out


def family_of_target(moe: dict) -> Family:
    return next(f for f in FAMILIES.values() if f.target == moe["family"])
