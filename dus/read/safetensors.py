"""The safetensors format, read strictly from its header alone.

A file is: 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. Each JSON entry gives dtype, shape and [begin, end) offsets into
the data. We never trust those numbers: every check the safetensors library
makes is made here, before a single tensor byte is read, and one more: no JSON
key may repeat (the library keeps the last one; another reader may not).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from dus.errors import InputError
from dus.read import strict_json
from dus.read.strict_json import brief

# Bits per element of every dtype the safetensors library (0.8) knows; F4 and F6 pack below a byte.
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
DTYPE_SIZES = {code: bits // 8 for code, bits in DTYPE_BITS.items() if bits % 8 == 0}
# safetensors dtype code <-> torch dtype name, for the dtypes a build may decode.
TORCH_NAMES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "U8": "uint8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}
DTYPE_CODES = {name: code for code, name in TORCH_NAMES.items()}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
U64_MAX = 2**64 - 1  # the library holds shapes, offsets and sizes in 64-bit usize
FIELDS = ("dtype", "shape", "data_offsets")


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
            if header_len > MAX_HEADER_BYTES:
                raise InputError(
                    f"{name}: header length {header_len} is over the safetensors limit of {MAX_HEADER_BYTES} bytes"
                )
            if 8 + header_len > size:
                raise InputError(f"{name}: header length {header_len} runs past the end of the file ({size} bytes)")
            raw = f.read(header_len)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    return parse_header(raw, path, data_start=8 + header_len, file_size=size)


def parse_header(raw: bytes, path: str, data_start: int, file_size: int):
    """Accept exactly the headers the safetensors library accepts, except repeated keys."""
    name = os.path.basename(path)
    header = strict_json.loads(raw, f"{name}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{name}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # null means no metadata, as in the library
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{name}: __metadata__ must map strings to strings")
    tensors = {k: _tensor_info(k, v, path, data_start) for k, v in header.items()}
    _check_layout(tensors, name, data_start, file_size)
    return tensors, metadata


def _tensor_info(key: str, entry, path: str, data_start: int) -> TensorInfo:
    name = os.path.basename(path)
    dtype, shape, offsets = _entry_fields(key, entry, name)
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise InputError(f"{name}: tensor {brief(key)} has an invalid shape {brief(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_u64(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InputError(f"{name}: tensor {brief(key)} has invalid data_offsets {brief(offsets)}")
    info = TensorInfo(path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
    need = _nbytes(key, dtype, shape, name)
    if info.nbytes != need:
        raise InputError(
            f"{name}: tensor {brief(key)} has {info.nbytes} bytes but shape {brief(shape)} of {dtype} needs {need}"
        )
    return info


def _entry_fields(key: str, entry, name: str) -> tuple:
    """(dtype, shape, data_offsets) of one header entry.

    The library's serde decoding also takes the entry as a 3-element list and the
    dtype as {"F32": null}, and ignores other keys; so do we, to accept what it accepts.
    """
    if isinstance(entry, list) and len(entry) == 3:
        dtype, shape, offsets = entry
    elif isinstance(entry, dict) and all(k in entry for k in FIELDS):
        dtype, shape, offsets = (entry[k] for k in FIELDS)
    else:
        raise InputError(f"{name}: tensor {brief(key)} needs an entry with dtype, shape and data_offsets")
    if isinstance(dtype, dict) and len(dtype) == 1 and None in dtype.values():
        (dtype,) = dtype
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InputError(f"{name}: tensor {brief(key)} has unknown dtype {brief(dtype)}")
    return dtype, shape, offsets


def _is_u64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


def _nbytes(key: str, dtype: str, shape: list[int], name: str) -> int:
    """Bytes the shape needs, refused where the library's 64-bit arithmetic overflows."""
    bits = 1
    for d in [*shape, DTYPE_BITS[dtype]]:  # in the library's order: a 0 after an overflow is too late
        bits *= d
        if bits > U64_MAX:
            raise InputError(
                f"{name}: tensor {brief(key)} has shape {brief(shape)} of {dtype}, whose size overflows 64 bits"
            )
    if bits % 8:
        raise InputError(
            f"{name}: tensor {brief(key)} has shape {brief(shape)} of {dtype}, which does not fill whole bytes"
        )
    return bits // 8


def _check_layout(tensors: dict[str, TensorInfo], name: str, data_start: int, file_size: int) -> None:
    """Tensors must tile the data region exactly: no gaps, overlaps or bytes past the end."""
    position = data_start
    for key, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != position:
            problem = "overlaps another tensor" if info.start < position else "leaves a gap before it"
            raise InputError(f"{name}: tensor {brief(key)} {problem} (offset {info.start - data_start})")
        position = info.end
    if position != file_size:
        raise InputError(
            f"{name}: data region ends at byte {position} but the file has {file_size} bytes (truncated or padded)"
        )


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
