"""The layer plan: what to build, independent of how bytes move.

A plan is the ordered list of output decoder layers. Each output layer is made
from one input layer (`copy`) or a weighted average of several (`blend`), each
input naming its source model and layer index; `edits` then zero or scale
named sub-tensors (e.g. the residual-output projections of a LLaMA-Pro block).
`new` marks layers that are not a plain copy of an original layer position, so
training can freeze the originals. Non-layer tensors (embeddings, final norm,
LM head) and the config come from the first source, `base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dus.errors import InputError


@dataclass(frozen=True)
class LayerRef:
    layer: int
    source: str = "base"
    weight: float = 1.0


@dataclass(frozen=True)
class Edit:
    """Zero or scale every layer tensor under the given module names."""

    op: str
    modules: tuple[str, ...]
    factor: float = 0.0

    def matches(self, suffix: str) -> bool:
        return any(suffix == m or suffix.startswith(m + ".") for m in self.modules)


@dataclass(frozen=True)
class OutputLayer:
    inputs: tuple[LayerRef, ...]
    edits: tuple[Edit, ...] = ()
    new: bool = False

    @property
    def op(self) -> str:
        if len(self.inputs) > 1:
            return "blend"
        return self.edits[0].op if self.edits else "copy"

    @property
    def source_layer(self) -> int:
        return self.inputs[0].layer

    @property
    def source(self) -> str:
        return self.inputs[0].source


def copy_of(layer: int, source: str = "base") -> OutputLayer:
    return OutputLayer((LayerRef(layer, source),))


@dataclass
class Plan:
    layers: list[OutputLayer]
    sources: dict[str, str]
    recipe: dict = field(default_factory=dict)
    config_overrides: dict = field(default_factory=dict)
    dtype: str = "auto"
    moe: dict = field(default_factory=dict)  # sparse upcycling (dus/plan/upcycle.py); empty: dense

    @property
    def base(self) -> str:
        return next(iter(self.sources))

    def to_json(self) -> dict:
        return {
            "sources": dict(self.sources),
            "recipe": self.recipe,
            "dtype": self.dtype,
            "config_overrides": self.config_overrides,
            "layers": [_layer_json(i, layer) for i, layer in enumerate(self.layers)],
            **({"moe": dict(self.moe)} if self.moe else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        try:
            layers = [_layer_from_json(entry) for entry in data["layers"]]
            return cls(
                layers,
                dict(data["sources"]),
                data.get("recipe", {}),
                data.get("config_overrides", {}),
                data.get("dtype", "auto"),
                dict(data.get("moe", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"invalid plan JSON: {e}") from e


def _layer_json(index: int, layer: OutputLayer) -> dict:
    entry = {
        "index": index,
        "source_layer": layer.source_layer,
        "source": layer.source,
        "op": layer.op,
        "new": layer.new,
    }
    if len(layer.inputs) > 1:
        entry["inputs"] = [{"source": r.source, "layer": r.layer, "weight": r.weight} for r in layer.inputs]
    if layer.edits:
        entry["edits"] = [{"op": e.op, "modules": list(e.modules), "factor": e.factor} for e in layer.edits]
    return entry


def _layer_from_json(entry: dict) -> OutputLayer:
    inputs = entry.get("inputs") or [{"source": entry.get("source", "base"), "layer": entry["source_layer"]}]
    refs = tuple(LayerRef(int(r["layer"]), r.get("source", "base"), float(r.get("weight", 1.0))) for r in inputs)
    edits = tuple(Edit(e["op"], tuple(e["modules"]), float(e.get("factor", 0.0))) for e in entry.get("edits", []))
    return OutputLayer(refs, edits, bool(entry.get("new", False)))
