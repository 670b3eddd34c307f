"""Tensors outside the stack packed by layer: Gemma-3n's and Gemma-4's per-layer embeddings.

`embed_tokens_per_layer` [vocab, L x D] holds one column block of width D per layer, and
`per_layer_model_projection` [L x D, hidden] one block of D rows per layer (D is the config's
`hidden_size_per_layer_input`). Output layer i takes its source layer's block, in plan order, so the grown
tensor is a rearrangement of its sources' bytes: rows of the projection are contiguous byte ranges, column
blocks of the embedding strided ones. `Blocks` describes it; dus/write/gather.py moves the bytes (no torch,
a bounded chunk of rows at a time), and `dus verify` re-derives the same ranges and compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dus.errors import InputError
from dus.read.architecture import packed_axis
from dus.read.safetensors import DTYPE_BITS, TensorInfo


@dataclass(frozen=True)
class Blocks:
    """The output is `rows` rows; row r is, for each (part, block) of `order`, bytes
    [block * block_bytes, (block + 1) * block_bytes) of row r of the spec's part `part`."""

    rows: int
    block_bytes: int
    order: tuple[tuple[int, int], ...]

    def ranges(self, parts: tuple[TensorInfo, ...], row: int):
        """(part, offset in its file, bytes) of output row `row`, in order."""
        for part, block in self.order:
            info = parts[part]
            row_bytes = info.nbytes // self.rows
            yield part, info.start + row * row_bytes + block * self.block_bytes, self.block_bytes


def per_layer_tensor(name: str, sources: dict, plan_layers: list) -> tuple[tuple[int, ...], tuple, Blocks] | None:
    """(output shape, input parts, Blocks) of a tensor packed by layer, or None for any other tensor.

    `plan_layers` are the plan's OutputLayers; each takes the block of its (only) input's layer."""
    axis = packed_axis(name)
    if axis is None:
        return None
    parts, order = [], []
    for layer in plan_layers:
        if len(layer.inputs) > 1:
            raise InputError(
                f"{name} holds one block per layer: a blended layer would need its blocks averaged, "
                "which dus does not do; copy layers instead"
            )
        source = sources[layer.source]
        if name not in source.tensors:
            raise InputError(f"source {layer.source!r} has no {name}, which holds one block per layer")
        info = source.tensors[name]
        if info not in parts:
            parts.append(info)
        order.append((parts.index(info), layer.source_layer))
    shapes = {
        _block_shape(info, axis, sources[source].num_layers, name)
        for source in {layer.source for layer in plan_layers}
        for info in [sources[source].tensors[name]]
    }
    if len(shapes) != 1:
        raise InputError(f"{name}: the sources' blocks differ in shape ({', '.join(map(str, sorted(shapes)))})")
    first = parts[0]
    width = first.shape[axis] // sources[plan_layers[0].source].num_layers
    shape = tuple(len(plan_layers) * width if a == axis else d for a, d in enumerate(first.shape))
    rows = 1
    for d in first.shape[:axis]:
        rows *= d
    block_bits = DTYPE_BITS[first.dtype] * width
    for d in first.shape[axis + 1 :]:
        block_bits *= d
    if block_bits % 8:
        raise InputError(f"{name}: a block of {first.dtype} is not a whole number of bytes")
    return shape, tuple(parts), Blocks(rows, block_bits // 8, tuple(order))


def _block_shape(info: TensorInfo, axis: int, n: int, name: str) -> tuple:
    if len(info.shape) <= axis or info.shape[axis] % n:
        raise InputError(
            f"{name} is {list(info.shape)}: its axis {axis} should hold one block per layer "
            f"({n} layers), which it does not divide into"
        )
    return (info.dtype, *(d // n if a == axis else d for a, d in enumerate(info.shape)))


def rearranged(specs: list, plan_layers: list) -> dict:
    """dus_plan.json's record of the tensors rearranged block by block: each output row is the listed
    (source, layer) blocks of `block_bytes` bytes, in order; `dus verify` re-derives and compares it."""
    return {
        spec.name: {
            "rows": spec.blocks.rows,
            "block_bytes": spec.blocks.block_bytes,
            "blocks": [[layer.source, layer.source_layer] for layer in plan_layers],
        }
        for spec in specs
        if spec.blocks is not None
    }
