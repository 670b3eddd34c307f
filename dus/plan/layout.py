"""From a plan and its opened sources to the exact list of output tensors.

Each output tensor says where its input bytes are and what to do with them:
copy them (the common, byte-exact case), blend several, or scale (0 = zero).
Shapes of every input are checked here, before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from dus.errors import InputError
from dus.plan.model import Edit, Plan
from dus.plan.per_layer import Blocks, per_layer_tensor
from dus.read.architecture import split_layer_name
from dus.read.safetensors import DTYPE_BITS, DTYPE_CODES, TensorInfo
from dus.read.source import Source
from dus.runtime import dtype_name

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class Computed:
    """A tensor computed by a named operator from input tensors (see dus.write.operators).

    `params` holds JSON-able values (seed, factor, solver settings) as sorted (key, value)
    pairs so a spec stays hashable; the operator must be deterministic in its inputs and
    params, which is what lets `dus verify` recompute the tensor and compare.
    """

    op: str
    inputs: tuple[TensorInfo, ...]
    params: tuple[tuple[str, object], ...] = ()

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    parts: tuple[tuple[TensorInfo, float], ...]  # (input, weight); empty when zeroed
    factor: float = 1.0
    computed: Computed | None = None  # when set, parts and factor are unused
    blocks: Blocks | None = None  # when set, the parts' blocks in this order (a tensor packed by layer)

    @property
    def nbytes(self) -> int:
        bits = DTYPE_BITS[self.dtype]  # bits, not bytes: F4 and F6 pack below a byte
        for d in self.shape:
            bits *= d
        return bits // 8

    @property
    def is_byte_copy(self) -> bool:
        return (
            self.computed is None
            and self.blocks is None
            and len(self.parts) == 1
            and self.factor == 1.0
            and self.parts[0][0].dtype == self.dtype
        )

    @property
    def is_block_copy(self) -> bool:
        """Byte ranges of its sources rearranged (dus/write/gather.py), no value changed."""
        return self.blocks is not None and all(info.dtype == self.dtype for info, _ in self.parts)


def layout(plan: Plan, sources: dict[str, Source]) -> list[TensorSpec]:
    """Output tensors in file order: embeddings, decoder layers in output order, the rest."""
    base = sources[plan.base]
    prefix = base.layer_prefix
    out_dtype = _dtype_code(plan.dtype)
    specs = [
        _non_layer(name, info, out_dtype, plan, sources)
        for name, info in base.tensors.items()
        if split_layer_name(name, prefix) is None
    ]
    head = [s for s in specs if _is_embedding(s.name)]
    tail = [s for s in specs if not _is_embedding(s.name)]
    layers = []
    for index, layer in enumerate(plan.layers):
        first = layer.inputs[0]
        _check_layer(sources, first.source, first.layer)
        # Another model's layer must fit where the base's layer of that index sits.
        if first.source != plan.base:
            _check_same_shapes(sources, (plan.base, min(first.layer, base.num_layers - 1)), (first.source, first.layer))
        for ref in layer.inputs[1:]:
            _check_layer(sources, ref.source, ref.layer)
            _check_same_shapes(sources, (first.source, first.layer), (ref.source, ref.layer))
        suffixes = sources[first.source].layer_tensors[first.layer]
        for edit in layer.edits:  # a module that names nothing would leave the layer silently unedited
            for module in edit.modules:
                if not any(Edit(edit.op, (module,)).matches(suffix) for suffix in suffixes):
                    modules = ", ".join(sorted({suffix.rsplit(".", 1)[0] for suffix in suffixes}))
                    raise InputError(
                        f"output layer {index}: {edit.op} names module {module!r}, which has no tensor in source "
                        f"layer {first.layer} (its modules: {modules})"
                    )
        for suffix in suffixes:
            parts = tuple(
                (sources[r.source].tensors[sources[r.source].layer_tensors[r.layer][suffix]], r.weight)
                for r in layer.inputs
            )
            factor = 1.0
            for edit in layer.edits:
                if edit.matches(suffix):
                    factor *= edit.factor
            info = parts[0][0]
            dtype = _converted(info.dtype, out_dtype)
            if factor == 0.0:
                parts = ()
            layers.append(TensorSpec(f"{prefix}{index}.{suffix}", dtype, info.shape, parts, factor))
    return head + layers + tail


def _non_layer(
    name: str, info: TensorInfo, out_dtype: str | None, plan: Plan, sources: dict[str, Source]
) -> TensorSpec:
    packed = per_layer_tensor(name, sources, plan.layers)
    if packed is not None:  # one block per layer (Gemma-3n's per-layer embeddings): the blocks in plan order
        shape, parts, blocks = packed
        return TensorSpec(name, _converted(info.dtype, out_dtype), shape, tuple((p, 1.0) for p in parts), blocks=blocks)
    return TensorSpec(name, _converted(info.dtype, out_dtype), info.shape, ((info, 1.0),))


def _is_embedding(name: str) -> bool:
    return any(token in name for token in ("embed", "wte", "wpe"))


def _converted(dtype: str, out_dtype: str | None) -> str:
    return out_dtype if out_dtype and dtype in FLOAT_DTYPES else dtype


def _dtype_code(dtype: str | None) -> str | None:
    """The safetensors code of the output's --dtype; None for "auto" (each tensor keeps its source's)."""
    name = dtype_name(dtype)
    return None if name == "auto" else DTYPE_CODES[name]


def _check_layer(sources: dict[str, Source], name: str, layer: int) -> None:
    if name not in sources:
        raise InputError(f"plan names source {name!r}, which is not among its sources ({', '.join(sources)})")
    n = sources[name].num_layers
    if not 0 <= layer < n:
        raise InputError(f"layer {layer} of source {name!r} is out of range: valid layers are 0..{n - 1}")


def _check_same_shapes(sources: dict[str, Source], want: tuple[str, int], got: tuple[str, int]) -> None:
    want_layer = sources[want[0]].layer_tensors[want[1]]
    got_layer = sources[got[0]].layer_tensors[got[1]]
    if set(want_layer) != set(got_layer):
        raise InputError(f"layer {got[1]} of {got[0]!r} has different tensors than layer {want[1]} of {want[0]!r}")
    for suffix, name in got_layer.items():
        got_info, want_info = sources[got[0]].tensors[name], sources[want[0]].tensors[want_layer[suffix]]
        if got_info.shape != want_info.shape or got_info.dtype != want_info.dtype:
            raise InputError(
                f"shape mismatch: {got[0]!r} layer {got[1]} {suffix} is {got_info.dtype}{list(got_info.shape)}, "
                f"but {want[0]!r} layer {want[1]} has {want_info.dtype}{list(want_info.shape)}"
            )


def output_bytes(specs: list[TensorSpec]) -> int:
    return sum(s.nbytes for s in specs)


def num_parameters(specs: list[TensorSpec]) -> int:
    return sum(s.nbytes * 8 // DTYPE_BITS[s.dtype] for s in specs)
