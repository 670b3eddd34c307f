"""A plan bound to a GGUF source: output tensors and the output metadata.

The layer plan comes from the ordinary machinery (recipes, --overlap,
--layers); here its output layers become `blk.N.*` byte copies and the
metadata is remapped, not copied: `<arch>.block_count`, every per-layer array
(length = block count) reindexed by source layer, and per-layer behaviour
that llama.cpp derives from the layer index made explicit (a periodic
sliding-window pattern becomes the per-layer bool array) or, where no key
can say it, refused. Lineage goes into `general.base_model.*` and the plan
into `dus.plan`, from which `dus verify` re-derives the whole file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dus import __version__
from dus.errors import InputError
from dus.plan.layout import layout
from dus.plan.model import Plan
from dus.plan.options import PlanOptions
from dus.plan.resolved import ResolvedPlan
from dus.read.gguf import GGUFSource
from dus.read.gguf_format import ARRAY, BOOL, SCALARS, STRING, U32, Value, ggml_types, make_value
from dus.read.safetensors import TensorInfo

PLAN_KEY = "dus.plan"
DROPPED_PREFIXES = ("general.base_model.", "split.", "dus.")
# Arrays under `<arch>.` that are not per layer even when their length happens to equal the layer count.
NOT_PER_LAYER = ("rope.dimension_sections",)
# Architectures whose llama.cpp loader (load_swa_pattern, as of llama-cpp-python 0.3.36) reads
# `<arch>.attention.sliding_window_pattern` as a per-layer bool array first, else as an integer
# period, else falls back to a default period: arch -> (default period, dense first). With
# dense_first layer i is full when i % period == 0, otherwise when i % period == period - 1.
PERIODIC_SWA = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "olmo2": (4, False),
    "plamo3": (8, False),
    "llama4": (4, False),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "gpt-oss": (2, False),
    "afmoe": (4, False),
    "laguna": (4, True),
    "mellum": (4, False),
    "smallthinker": (4, True),
    "modern-bert": (3, True),
    "muse-glimmer": (4, False),
}
# Architectures whose loader turns sliding windows on only at one layer count (exaone4: 64, the 32B).
SWA_LAYER_COUNT = {"exaone4": 64}
# Architectures whose llama.cpp graph skips RoPE in layer i when (i + 1) % step == 0, a step no GGUF key
# sets (llama4 with a zero sliding window uses the layer count instead).
NO_ROPE_STEP = {"llama4": 4, "afmoe": 4}
# Integer keys that make a layer special by its index modulo the value (interleaved MoE, ...).
PERIOD_SUFFIXES = ("_step", "_period", "_interval")
# Integer keys that make the last k layers special (MTP / NextN layers, KV-sharing layers).
TRAILING_KEYS = ("nextn_predict_layers", "attention.shared_kv_layers")


@dataclass(frozen=True)
class Placed:
    """An output tensor's bytes: its source ranges back to back (E of them for stacked experts,
    dus/plan/upcycle_gguf.py), or `zeros` bytes of zeros when it has no source (a zero router)."""

    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[TensorInfo, ...]
    zeros: int = 0

    @property
    def nbytes(self) -> int:
        return self.zeros + sum(piece.nbytes for piece in self.pieces)


def placed(spec) -> Placed:
    """A plan's TensorSpec as GGUF bytes: one source range (a copy), several (a stack), or none (zeros)."""
    if not spec.parts:
        return Placed(spec.dtype, spec.shape, (), ggml_nbytes(spec.dtype, spec.shape))
    return Placed(spec.parts[0][0].dtype, spec.shape, tuple(info for info, _ in spec.parts))


def ggml_nbytes(type_name: str, shape: tuple[int, ...]) -> int:
    ((block, size),) = [(b, n) for name, b, n in ggml_types().values() if name == type_name]
    count = 1
    for d in shape:
        count *= d
    return count // block * size


@dataclass
class GGUFPlan(ResolvedPlan):
    """A ResolvedPlan whose tensors are ggml blocks: sizes come from the source tensors."""

    metadata: dict[str, Value] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(spec.shape) for spec in self.tensors)

    @property
    def output_bytes(self) -> int:
        return sum(placed(spec).nbytes for spec in self.tensors)

    @property
    def alignment(self) -> int:
        return self.base.files[0].alignment


def resolve_gguf(
    plan: Plan, sources: dict[str, GGUFSource], options: PlanOptions, record: str | None = None
) -> GGUFPlan:
    """Bind `plan` to its GGUF source; `record` (from a built file) replaces the lineage record."""
    _check_copy_only(plan, sources)
    base = sources[plan.base]
    tensors = layout(plan, sources)
    if plan.moe:  # llama -> llama with experts (dus/plan/upcycle_gguf.py)
        from dus.plan.upcycle_gguf import expert_tensors

        tensors = expert_tensors(plan.moe, base, tensors)
    source_layers = [layer.source_layer for layer in plan.layers]
    resolved = GGUFPlan(plan, sources, tensors, {}, options)
    record = record or json.dumps(gguf_record(resolved), sort_keys=True)
    resolved.metadata = output_metadata(base, source_layers, record, resolved.num_parameters)
    if plan.moe:
        from dus.plan.upcycle_gguf import expert_metadata

        resolved.metadata = expert_metadata(plan.moe, base, resolved.metadata)
    resolved.config = {
        k: v.value for k, v in resolved.metadata.items() if not k.startswith("tokenizer.") and k != PLAN_KEY
    }
    return resolved


def check_gguf_options(options: PlanOptions, refs: dict[str, str]) -> None:
    """What a GGUF build cannot do, refused before any file is opened."""
    if len(refs) > 1:
        raise InputError("a GGUF build takes one source model")
    if options.dtype not in (None, "auto"):
        raise InputError(
            f"dtype {options.dtype} (from --dtype, a preset or a recipe) does not apply to a GGUF "
            "build: every tensor keeps its ggml type"
        )
    if options.config_overrides:
        raise InputError(
            "config_overrides (from a preset or a recipe) edit config.json; a GGUF build remaps its "
            "metadata itself (change keys afterwards with gguf-py's gguf_new_metadata.py)"
        )
    if any(getattr(options, key) is not None for key in ("width", "mlp_width", "width_noise")):
        raise InputError(
            "width growth computes every tensor, which in a quantized GGUF would need de-quantization "
            "(not supported): build from safetensors"
        )
    if options.recipe == "expand":
        raise InputError(
            "--recipe expand zeroes projections, which in a quantized GGUF would need de-quantization "
            "(not supported): a GGUF build copies layers byte for byte"
        )


def _check_copy_only(plan: Plan, sources: dict) -> None:
    check_gguf_options(PlanOptions(dtype=plan.dtype), sources)
    for index, layer in enumerate(plan.layers):
        if layer.op != "copy":
            raise InputError(
                f"output layer {index} is a {layer.op}: a GGUF build copies layers byte for byte, and "
                "blending, scaling or zeroing quantized tensors would need de-quantization (not supported)"
            )


def gguf_record(resolved: GGUFPlan) -> dict:
    """What a GGUF build's `dus.plan` metadata holds (its dus_plan.json): the sources and the plan, enough to
    re-derive every byte."""
    return {
        "dus_version": __version__,
        "sources": {
            name: {
                "ref": str(Path(s.ref).expanduser().resolve()),
                "num_layers": s.num_layers,
                "layer_prefix": s.layer_prefix,
            }
            for name, s in resolved.sources.items()
        },
        "plan": resolved.plan.to_json(),
    }


def output_metadata(source: GGUFSource, source_layers: list[int], record: str, num_parameters: int) -> dict[str, Value]:
    arch, n, meta = source.architecture, source.num_layers, source.metadata
    out: dict[str, Value] = {}
    for key, value in meta.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        if key == f"{arch}.block_count":
            value = make_value(value.type, len(source_layers))
        elif _is_per_layer(key, value, arch, n):
            value = make_value(ARRAY, [value.value[s] for s in source_layers], value.item_type)
        out[key] = value
    _sliding_window_pattern(out, meta, arch, n, source_layers)
    _leading_dense(out, meta, arch, source_layers)
    _check_periods(meta, arch, source_layers)
    _check_no_rope(meta, arch, n, source_layers)
    _check_trailing(meta, arch, n, source_layers)
    if "general.size_label" in out and f"{arch}.expert_count" not in meta:
        from gguf.utility import model_weight_count_rounded_notation

        out["general.size_label"] = make_value(STRING, model_weight_count_rounded_notation(num_parameters))
    out.update(_lineage(source))
    out[PLAN_KEY] = make_value(STRING, record)
    return out


def _is_per_layer(key: str, value: Value, arch: str, n: int) -> bool:
    return (
        value.type == ARRAY and key.startswith(arch + ".") and len(value.value) == n and not key.endswith(NOT_PER_LAYER)
    )


def _sliding_window_pattern(out: dict, meta: dict, arch: str, n: int, source_layers: list[int]) -> None:
    """A periodic pattern (an int, or the runtime's default) the plan breaks becomes a per-layer bool array."""
    key = f"{arch}.attention.sliding_window_pattern"
    given = meta.get(key)
    period, dense_first = PERIODIC_SWA.get(arch, (None, False))
    if given is not None and given.type in SCALARS:
        period = int(given.value)
    elif given is not None or period is None:
        return  # already a per-layer array (remapped above), or no pattern this runtime derives
    _check_swa_layer_count(arch, n, len(source_layers))

    def slides(i: int) -> bool:
        return period == 0 or (i % period != 0 if dense_first else i % period < period - 1)

    if any(slides(i) != slides(s) for i, s in enumerate(source_layers)):
        out[key] = make_value(ARRAY, [slides(s) for s in source_layers], BOOL)


def _check_swa_layer_count(arch: str, n: int, out_n: int) -> None:
    count = SWA_LAYER_COUNT.get(arch)
    if count is not None and (n == count) != (out_n == count):
        raise InputError(
            f"llama.cpp turns {arch}'s sliding-window attention on only for {count}-layer models, and this "
            f"plan goes from {n} to {out_n} layers; no GGUF key can keep it as planned: refusing to write a "
            "model that differs from its plan"
        )


def _leading_dense(out: dict, meta: dict, arch: str, source_layers: list[int]) -> None:
    """Dense-first MoE: the first k layers are dense. The output's dense layers must lead too."""
    key = f"{arch}.leading_dense_block_count"
    if key not in meta or meta[key].type not in SCALARS:
        return
    dense = [s < meta[key].value for s in source_layers]
    count = sum(dense)
    if dense != [i < count for i in range(len(source_layers))]:
        raise InputError(
            f"{key} says the first {meta[key].value} layers are dense; this plan puts a dense layer after "
            "an MoE layer, which no GGUF key can express: refusing to write a model that differs from its plan"
        )
    out[key] = make_value(meta[key].type, count)


def _check_periods(meta: dict, arch: str, source_layers: list[int]) -> None:
    for key, value in meta.items():
        if not (key.startswith(arch + ".") and key.endswith(PERIOD_SUFFIXES) and value.type in SCALARS):
            continue
        period = int(value.value)
        bad = next((i for i, s in enumerate(source_layers) if period > 0 and i % period != s % period), None)
        if bad is not None:
            raise InputError(
                f"{key} = {period} makes layers special by their index, and this plan breaks that period "
                f"(output layer {bad} is source layer {source_layers[bad]}); no GGUF key can express it: "
                "refusing to write a model that differs from its plan"
            )


def _check_no_rope(meta: dict, arch: str, n: int, source_layers: list[int]) -> None:
    step = NO_ROPE_STEP.get(arch)
    window = meta.get(f"{arch}.attention.sliding_window")
    if step is None:
        return
    steps = (n, len(source_layers)) if arch == "llama4" and window is not None and window.value == 0 else (step, step)
    bad = next((i for i, s in enumerate(source_layers) if ((i + 1) % steps[1] == 0) != ((s + 1) % steps[0] == 0)), None)
    if bad is not None:
        raise InputError(
            f"llama.cpp runs {arch} without RoPE in layers chosen by their index, and this plan changes "
            f"which (output layer {bad} is source layer {source_layers[bad]}); no GGUF key can express it: "
            "refusing to write a model that differs from its plan"
        )


def _check_trailing(meta: dict, arch: str, n: int, source_layers: list[int]) -> None:
    for suffix in TRAILING_KEYS:
        value = meta.get(f"{arch}.{suffix}")
        k = int(value.value) if value is not None and value.type in SCALARS else 0
        if k > 0 and (source_layers[-k:] != list(range(n - k, n)) or any(s >= n - k for s in source_layers[:-k])):
            raise InputError(
                f"{arch}.{suffix} = {k} makes the last {k} layers special; this plan does not keep them "
                "last and once: refusing to write a model that differs from its plan"
            )


def _lineage(source: GGUFSource) -> dict[str, Value]:
    """`general.base_model.*` naming the source, as llama.cpp's converters write it."""
    meta = source.metadata
    name = meta.get("general.name")
    out = {
        "general.base_model.count": make_value(U32, 1),
        "general.base_model.0.name": make_value(
            STRING, name.value if name and name.type == STRING else Path(source.files[0].path).stem
        ),
    }
    for field_name in ("organization", "version", "repo_url"):
        value = meta.get(f"general.{field_name}")
        if value is not None and value.type == STRING:
            out[f"general.base_model.0.{field_name}"] = value
    return out
