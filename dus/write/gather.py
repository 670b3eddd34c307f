"""The bytes of a tensor packed by layer (dus/plan/per_layer.py): its sources' blocks in plan order.

Pure byte moves, no torch. Where each block is one contiguous range (the projection's blocks of rows), the
ranges are copied as they are (`block_ranges`: in the kernel, like any copied tensor). Otherwise (the
embedding's column blocks) a bounded chunk of rows is read from each source (positioned reads) and each output
row joins its blocks: memory is one chunk of rows, not the tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from dus.plan.layout import TensorSpec

CHUNK = 16 * 1024 * 1024  # output bytes per chunk of rows


def block_ranges(spec: TensorSpec) -> list[tuple[str, int, int]] | None:
    """(path, start, bytes) of each block in output order where a block is one contiguous byte range of its
    source (one row: the projection's blocks of rows), so the kernel can copy them; None otherwise."""
    if spec.blocks.rows != 1:
        return None
    parts = [info for info, _ in spec.parts]
    return [(parts[part].path, start, nbytes) for part, start, nbytes in spec.blocks.ranges(tuple(parts), 0)]


def block_chunks(spec: TensorSpec, chunk: int = CHUNK) -> Iterator[bytes]:
    """The spec's output bytes, front to back, a chunk of rows at a time."""
    blocks, parts = spec.blocks, [info for info, _ in spec.parts]
    row_bytes = [info.nbytes // blocks.rows for info in parts]
    per_chunk = max(1, chunk // max(1, len(blocks.order) * blocks.block_bytes))
    files = {path: os.open(path, os.O_RDONLY) for path in {info.path for info in parts}}
    try:
        for first in range(0, blocks.rows, per_chunk):
            count = min(per_chunk, blocks.rows - first)
            data = [
                memoryview(_pread(files[info.path], count * size, info.start + first * size))
                for info, size in zip(parts, row_bytes)
            ]
            yield b"".join(
                data[part][
                    row * row_bytes[part] + block * blocks.block_bytes : row * row_bytes[part]
                    + (block + 1) * blocks.block_bytes
                ]
                for row in range(count)
                for part, block in blocks.order
            )
    finally:
        for fd in files.values():
            os.close(fd)


def _pread(fd: int, count: int, offset: int) -> bytes:
    data = os.pread(fd, count, offset)
    while len(data) < count:
        more = os.pread(fd, count - len(data), offset + len(data))
        if not more:
            raise OSError("a source file ended inside a tensor")
        data += more
    return data
