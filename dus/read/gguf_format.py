"""The GGUF container (v3, little-endian): its constants, metadata values, and their encoding and decoding.

A file is: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
the metadata (key string, u32 value type, value), the tensor infos (name,
u32 n_dims, u64 dims, u32 ggml type, u64 offset into the data section), zero
padding to `general.alignment` (default 32), then the tensor data. As for
safetensors, no number is trusted: every length and count is checked against
the bytes left before anything is allocated, every tensor's size follows from
its ggml type's block size, and tensors must be aligned, inside the file and
disjoint.

Each metadata value keeps its encoded bytes, so a writer copies what it does
not change byte for byte. Shared by the reader (dus/read/gguf.py), the plan
(dus/plan/gguf.py), the writer (dus/write/gguf.py) and `dus verify`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dus.errors import InputError
from dus.read.safetensors import TensorInfo

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME, terminating NUL included
# GGUF value type -> struct format; 8 is a string, 9 an array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
U16, U32, I32, BOOL = 2, 4, 5, 7
_U64 = struct.Struct("<Q")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass(frozen=True)
class Value:
    """A metadata value: its GGUF type, its Python value, and its encoding (type tag included)."""

    type: int
    value: object
    raw: bytes
    item_type: int | None = None  # arrays only


@dataclass
class GGUFFile:
    path: str
    metadata: dict[str, Value]
    tensors: dict[str, TensorInfo]  # file order; dtype = ggml type name, shape in numpy order
    alignment: int
    header_bytes: int  # bytes before the data section (padding included)


def ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, elements per block, bytes per block), from the `gguf` package."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        raise InputError("reading GGUF needs the `gguf` package: pip install 'dus[gguf]'") from None
    return {t.value: (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}


def encode_string(text: str) -> bytes:
    """A GGUF string: u64 length, then UTF-8 bytes."""
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def make_value(vtype: int, value, item_type: int | None = None) -> Value:
    """A metadata Value with its GGUF encoding."""
    if vtype in SCALARS:
        raw = struct.pack("<I" + SCALARS[vtype], vtype, value)
    elif vtype == STRING:
        raw = struct.pack("<I", vtype) + encode_string(value)
    elif item_type in SCALARS:
        raw = struct.pack(f"<IIQ{len(value)}{SCALARS[item_type]}", ARRAY, item_type, len(value), *value)
    else:
        raw = struct.pack("<IIQ", ARRAY, STRING, len(value)) + b"".join(encode_string(v) for v in value)
    return Value(vtype, value, raw, item_type)


class Cursor:
    """Reads fields front to back; a field that would run past the end is an InputError."""

    def __init__(self, buf, name: str):
        self.buf, self.pos, self.name = buf, 0, name

    def fail(self, message: str):
        raise InputError(f"{self.name}: {message}")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            self.fail(f"{what} runs past the end of the file (truncated, or a length that lies)")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def left(self) -> int:
        return len(self.buf) - self.pos

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("Q", f"{what} length"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")


def parse(cur: Cursor, path: str, size: int) -> GGUFFile:
    if cur.take(4, "magic") != MAGIC:
        cur.fail("not a GGUF file (bad magic)")
    raw_version = cur.take(4, "version")
    version = struct.unpack("<I", raw_version)[0]
    if version != VERSION:
        if struct.unpack(">I", raw_version)[0] in (1, 2, 3):
            cur.fail(
                "big-endian GGUF is not supported (convert it to little-endian with gguf-py's gguf_convert_endian.py)"
            )
        if version in (1, 2):
            cur.fail(f"GGUF version {version} is not supported (only version 3; re-convert with a current llama.cpp)")
        cur.fail(f"unknown GGUF version {version} (only version 3 is supported)")
    n_tensors = cur.unpack("Q", "tensor count")
    n_kv = cur.unpack("Q", "metadata count")
    # Smallest possible entries: a KV is 8 (key length) + 4 (type) + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8.
    if n_kv * 13 + n_tensors * 32 > cur.left():
        cur.fail(f"header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold")
    metadata: dict[str, Value] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in metadata:
            cur.fail(f"metadata key {key!r} appears twice")
        metadata[key] = _value(cur, key)
    alignment = _alignment(cur, metadata)
    types = ggml_types()
    infos = [_tensor_info(cur, types, alignment) for _ in range(n_tensors)]
    header_bytes = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, shape, type_name, offset, nbytes in infos:
        if name in tensors:
            cur.fail(f"tensor {name!r} appears twice")
        start = header_bytes + offset
        if start + nbytes > size:
            cur.fail(f"tensor {name!r} (offset {offset}, {nbytes} bytes) runs past the end of the file ({size} bytes)")
        tensors[name] = TensorInfo(path, type_name, shape, start, start + nbytes)
    _check_disjoint(cur, tensors)
    return GGUFFile(path, metadata, tensors, alignment, header_bytes)


def _value(cur: Cursor, key: str) -> Value:
    start = cur.pos
    vtype = cur.unpack("I", f"type of {key!r}")
    if vtype in SCALARS:
        value = cur.unpack(SCALARS[vtype], f"value of {key!r}")
        return Value(vtype, value, bytes(cur.buf[start : cur.pos]))
    if vtype == STRING:
        value = cur.string(f"value of {key!r}")
        return Value(vtype, value, bytes(cur.buf[start : cur.pos]))
    if vtype != ARRAY:
        cur.fail(f"metadata {key!r} has unknown value type {vtype}")
    item_type = cur.unpack("I", f"array type of {key!r}")
    count = cur.unpack("Q", f"array length of {key!r}")
    if item_type in SCALARS:
        fmt = f"<{count}{SCALARS[item_type]}"
        if count * struct.calcsize(SCALARS[item_type]) > cur.left():
            cur.fail(f"array {key!r} of {count} items runs past the end of the file")
        items = list(struct.unpack(fmt, cur.take(struct.calcsize(fmt), f"array {key!r}")))
    elif item_type == STRING:
        if count * 8 > cur.left():
            cur.fail(f"array {key!r} of {count} strings runs past the end of the file")
        items = _strings(cur, count, key)
    else:
        cur.fail(f"array {key!r} has unsupported item type {item_type}")
    return Value(ARRAY, items, bytes(cur.buf[start : cur.pos]), item_type)


def _strings(cur: Cursor, count: int, key: str) -> list[str]:
    """`count` strings, in one tight loop: a tokenizer holds ~10^5 of them."""
    buf, pos, end, unpack = cur.buf, cur.pos, len(cur.buf), _U64.unpack_from
    raw = []
    for _ in range(count):
        if pos + 8 > end or (n := unpack(buf, pos)[0]) > end - pos - 8:
            cur.fail(f"an item of array {key!r} runs past the end of the file (truncated, or a length that lies)")
        raw.append(buf[pos + 8 : pos + 8 + n])
        pos += 8 + n
    cur.pos = pos
    try:
        return [item.decode("utf-8") for item in raw]
    except UnicodeDecodeError:
        cur.fail(f"an item of array {key!r} is not valid UTF-8")


def _alignment(cur: Cursor, metadata: dict[str, Value]) -> int:
    value = metadata.get("general.alignment")
    if value is None:
        return DEFAULT_ALIGNMENT
    if value.type != U32 or value.value <= 0 or value.value & (value.value - 1):
        cur.fail(f"general.alignment must be a u32 power of two, got {value.value!r}")
    return value.value


def _tensor_info(cur: Cursor, types: dict, alignment: int):
    name = cur.string("tensor name")
    if len(name.encode()) >= MAX_NAME:
        cur.fail(f"tensor name {name[:40]!r}… is longer than {MAX_NAME - 1} bytes")
    n_dims = cur.unpack("I", f"n_dims of {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    dims = [cur.unpack("Q", f"dims of {name!r}") for _ in range(n_dims)]
    ggml_type = cur.unpack("I", f"type of {name!r}")
    offset = cur.unpack("Q", f"offset of {name!r}")
    if ggml_type not in types:
        cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
    type_name, block, block_bytes = types[ggml_type]
    numel = 1
    for d in dims:
        numel *= d
    if numel >= 2**63:
        cur.fail(f"tensor {name!r} has dims {dims} whose product overflows")
    if dims[0] % block:
        cur.fail(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of the {type_name} block size {block}")
    if offset % alignment:
        cur.fail(f"tensor {name!r} offset {offset} is not aligned to {alignment} bytes")
    return name, tuple(reversed(dims)), type_name, offset, numel // block * block_bytes


def _check_disjoint(cur: Cursor, tensors: dict[str, TensorInfo]) -> None:
    end, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start < end:
            cur.fail(f"tensor {name!r} overlaps tensor {previous!r}")
        end, previous = max(end, info.end), name
