"""The safetensors format, read strictly from its header alone.

A file is: 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. Each JSON entry gives dtype, shape and [begin, end) offsets into
the data. We never trust those numbers: every check the safetensors library
makes is made here, before a single tensor byte is read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from dus.errors import InputError

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# safetensors dtype code <-> torch dtype name, for the dtypes a build may decode.
TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
               "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}
DTYPE_CODES = {name: code for code, name in TORCH_NAMES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live: `path`, absolute [start, end) offsets."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Return ({name: TensorInfo}, metadata) of a safetensors file, validated."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise InputError(f"{name}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise InputError(f"{name}: header length {header_len} runs past the end of the file ({size} bytes)")
            raw = f.read(header_len)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    return parse_header(raw, path, data_start=8 + header_len, file_size=size)


def parse_header(raw: bytes, path: str, data_start: int, file_size: int):
    name = os.path.basename(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{name}: corrupt safetensors header ({e.__class__.__name__})") from e
    if not isinstance(header, dict):
        raise InputError(f"{name}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{name}: __metadata__ must map strings to strings")
    tensors = {k: _tensor_info(k, v, path, data_start) for k, v in header.items()}
    _check_layout(tensors, name, data_start, file_size)
    return tensors, metadata


def _tensor_info(key: str, entry, path: str, data_start: int) -> TensorInfo:
    name = os.path.basename(path)
    if not isinstance(entry, dict):
        raise InputError(f"{name}: tensor {key!r} has no dtype/shape/offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise InputError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{name}: tensor {key!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise InputError(f"{name}: tensor {key!r} has invalid data_offsets {offsets!r}")
    info = TensorInfo(path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
    if info.numel * DTYPE_SIZES[dtype] != info.nbytes:
        raise InputError(f"{name}: tensor {key!r} has {info.nbytes} bytes but shape {shape} of {dtype} needs {info.numel * DTYPE_SIZES[dtype]}")
    return info


def _check_layout(tensors: dict[str, TensorInfo], name: str, data_start: int, file_size: int) -> None:
    """Tensors must tile the data region exactly: no gaps, overlaps or bytes past the end."""
    position = data_start
    for key, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != position:
            problem = "overlaps another tensor" if info.start < position else "leaves a gap before it"
            raise InputError(f"{name}: tensor {key!r} {problem} (offset {info.start - data_start})")
        position = info.end
    if position != file_size:
        raise InputError(f"{name}: data region ends at byte {position} but the file has {file_size} bytes (truncated or padded)")


def encode_header(entries: dict[str, tuple[str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    """8-byte length + JSON header for tensors laid out in the given order.

    `entries` maps name -> (dtype, shape, nbytes). The JSON is padded with
    spaces to a multiple of 8 bytes, as the safetensors library does, so the
    data that follows stays aligned.
    """
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key, (dtype, shape, nbytes) in entries.items():
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
