"""Write a resolved GGUF plan as a GGUF file (or a split set), bytes moved not decoded.

The header (metadata and tensor infos) is encoded here; unchanged metadata
values are copied as their source bytes. Tensor data goes through the same
in-kernel byte copy as safetensors shards (`copy_range`), so every tensor, of
any ggml type, is bit-identical to its source and memory stays flat. A split
output follows llama.cpp's `gguf-split`: all metadata in the first file,
`split.no`, `split.count`, `split.tensors.count` in every file.

Files are written into a hidden staging directory beside OUTPUT, under the
lock of dus/core/publish.py (one run per OUTPUT; a dead run's leftovers are
swept), and renamed into place at the end, the first file (which names the
set) last. With --force the files of the set they replace that the new set
does not overwrite (another split count, or a single file) are removed.
A split set is several files, so it cannot be swapped in one step: while
--force replaces a set of the same count, a reader may open a mix of old and
new files (docs/gguf.md).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dus.core import publish
from dus.errors import InputError
from dus.plan.gguf import Placed, placed
from dus.read.gguf_format import I32, MAGIC, U16, VERSION, Value, encode_string, ggml_types, make_value
from dus.write.shards import copy_range


@dataclass
class FilePlan:
    """One output file: its header and, per tensor, (offset in the data section, its bytes)."""

    name: str
    header: bytes
    tensors: list[tuple[int, Placed]]
    size: int


def plan_files(resolved, output: Path, counts: list[int]) -> list[FilePlan]:
    """Output files holding counts[i] tensors each, in plan order."""
    specs = [(spec.name, placed(spec)) for spec in resolved.tensors]
    names = split_names(output, len(counts))
    files, start = [], 0
    for index, count in enumerate(counts):
        metadata = _split_metadata(resolved.metadata, index, len(counts), len(specs))
        files.append(_file_plan(names[index], metadata, specs[start : start + count], resolved.alignment))
        start += count
    return files


def split_names(output: Path, count: int) -> list[str]:
    if count == 1:
        return [output.name]
    stem = output.name[: -len(".gguf")]
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def split_counts(resolved, max_bytes: int | None) -> list[int]:
    """Tensors per file, each file at most max_bytes of tensor data (one tensor at least)."""
    counts, size = [0], 0
    for spec in resolved.tensors:
        nbytes = placed(spec).nbytes
        if max_bytes and counts[-1] and size + nbytes > max_bytes:
            counts.append(0)
            size = 0
        counts[-1] += 1
        size += nbytes
    return counts


def _split_metadata(metadata: dict[str, Value], index: int, count: int, n_tensors: int) -> dict[str, Value]:
    if count == 1:
        return metadata
    keep = metadata if index == 0 else {k: v for k, v in metadata.items() if k == "general.alignment"}
    return {
        **keep,
        "split.no": make_value(U16, index),
        "split.count": make_value(U16, count),
        "split.tensors.count": make_value(I32, n_tensors),
    }


def _file_plan(name: str, metadata: dict[str, Value], tensors: list[tuple[str, Placed]], alignment: int) -> FilePlan:
    type_ids = {type_name: type_id for type_id, (type_name, _, _) in ggml_types().items()}
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    for key, value in metadata.items():
        parts += [encode_string(key), value.raw]
    placed, offset = [], 0
    for tensor_name, info in tensors:
        dims = tuple(reversed(info.shape))
        parts += [
            encode_string(tensor_name),
            struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_ids[info.dtype], offset),
        ]
        placed.append((offset, info))
        offset = _aligned(offset + info.nbytes, alignment)
    header = b"".join(parts)
    header += b"\0" * (_aligned(len(header), alignment) - len(header))
    return FilePlan(name, header, placed, len(header) + offset)


def _aligned(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def write_gguf(
    resolved,
    output: Path,
    max_bytes: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write OUTPUT (.gguf); return the build record the CLI prints."""
    files = plan_files(resolved, output, split_counts(resolved, max_bytes))
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    with publish.output_lock(parent, output.name):
        for target in (parent / file.name for file in files):
            if os.path.lexists(target) and not force:
                raise InputError(f"{target} already exists (use --force to replace it)")
            if target.is_dir():
                raise InputError(f"{target} exists and is a directory")
        replaced = _output_set(output) if force else []
        publish.require_space(parent, sum(f.size for f in files))
        with publish.staging_directory(parent, output.name) as staging:
            for file in files:
                _write_file(file, staging / file.name, progress or (lambda n: None))
            publish.follow_umask(staging)
            publish.on_step("publishing")
            for file in [*files[1:], files[0]]:
                os.replace(staging / file.name, parent / file.name)
        for path in replaced:
            if path.name not in {f.name for f in files}:
                path.unlink(missing_ok=True)
    return {
        "output": {
            "num_layers": len(resolved.plan.layers),
            "num_parameters": resolved.num_parameters,
            "total_size": resolved.output_bytes,
            "shards": {f.name: {"bytes": f.size} for f in files},
        }
    }


def _output_set(output: Path) -> list[Path]:
    """The files OUTPUT names now: OUTPUT itself and any split set of its stem (NAME-00001-of-00003.gguf ...)."""
    split = re.compile(re.escape(output.name[: -len(".gguf")]) + r"-[0-9]{5}-of-[0-9]{5}\.gguf")
    return [
        output.parent / name
        for name in sorted(os.listdir(output.parent))
        if name == output.name or split.fullmatch(name)
    ]


def _write_file(file: FilePlan, path: Path, progress: Callable[[int], None]) -> None:
    sources: dict[str, int] = {}
    try:
        with open(path, "wb") as out:
            out.write(file.header)
            out.flush()
            fd, position = out.fileno(), len(file.header)
            for offset, tensor in file.tensors:
                os.write(fd, b"\0" * (len(file.header) + offset - position + tensor.zeros))  # padding, zeros
                for info in tensor.pieces:
                    if info.path not in sources:
                        sources[info.path] = os.open(info.path, os.O_RDONLY)
                    copy_range(sources[info.path], fd, info.start, info.nbytes)
                position = len(file.header) + offset + tensor.nbytes
                progress(tensor.nbytes)
            os.write(fd, b"\0" * (file.size - position))
    finally:
        for fd in sources.values():
            os.close(fd)
