"""GGUF models as sources: one file or a split set, read strictly from its header alone.

The format itself (dus/read/gguf_format.py) is parsed from the file mapped in
memory; no tensor byte is read. A split set (`name-00001-of-0000N.gguf`,
llama.cpp's `gguf-split`) is read as one model.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dus.errors import InputError
from dus.read.gguf_format import SCALARS, SPLIT_KEYS, STRING, U16, Cursor, GGUFFile, Value, parse
from dus.read.source import Source

SPLIT_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


@dataclass
class GGUFSource(Source):
    """A GGUF model presented as a Source: layer stack `blk.N.`, count `<arch>.block_count`."""

    files: list[GGUFFile] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Value]:
        return self.files[0].metadata

    @property
    def architecture(self) -> str:
        return self.config["architecture"]


def is_gguf(ref) -> bool:
    return str(ref).endswith(".gguf")


def open_gguf_source(ref: str) -> GGUFSource:
    files = read_split_set(Path(ref).expanduser())
    meta = files[0].metadata
    arch = _metadata(meta, "general.architecture", (STRING,), files[0].path)
    count_key = f"{arch}.block_count"
    n = _metadata(meta, count_key, tuple(SCALARS), files[0].path)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"{os.path.basename(files[0].path)}: {count_key} must be a positive integer, got {n!r}")
    tensors = {name: info for f in files for name, info in f.tensors.items()}
    config = {"architecture": arch, "num_hidden_layers": n}
    return GGUFSource(ref, config, tensors, files=files)


def _metadata(meta: dict[str, Value], key: str, types: tuple[int, ...], path: str):
    if key not in meta or meta[key].type not in types:
        raise InputError(f"{os.path.basename(path)}: metadata {key!r} is missing or has the wrong type")
    return meta[key].value


def split_paths(path: Path) -> list[Path]:
    """The files of a split set named by its first file, or [path]."""
    m = SPLIT_NAME.match(path.name)
    if not m:
        return [path]
    if int(m.group(2)) != 1:
        raise InputError(f"{path}: give the first file of a split GGUF (…-00001-of-{m.group(3)}.gguf)")
    count = int(m.group(3))
    return [path.with_name(f"{m.group(1)}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_split_set(path: Path) -> list[GGUFFile]:
    paths = split_paths(path)
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: does not exist")
    files = [read_gguf(str(p)) for p in paths]
    first = files[0].metadata
    if len(paths) == 1 and first.get("split.count", Value(U16, 1, b"")).value == 1:
        return files
    for index, f in enumerate(files):
        name = os.path.basename(f.path)
        no, count = (f.metadata.get(k) for k in SPLIT_KEYS[:2])
        if no is None or count is None or no.value != index or count.value != len(files):
            raise InputError(
                f"{name}: split.no/split.count say {getattr(no, 'value', None)}/{getattr(count, 'value', None)}, "
                f"expected {index}/{len(files)} from the file names"
            )
    names = [n for f in files for n in f.tensors]
    if len(set(names)) != len(names):
        raise InputError(f"{os.path.basename(files[0].path)}: a tensor appears in two files of the split set")
    want = first.get("split.tensors.count")
    if want is None or want.value != len(names):
        raise InputError(
            f"{os.path.basename(files[0].path)}: split.tensors.count is "
            f"{getattr(want, 'value', None)}, the files hold {len(names)} tensors"
        )
    return files


def read_gguf(path: str) -> GGUFFile:
    """Parse and validate one GGUF file's header; no tensor byte is read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise InputError(f"{os.path.basename(path)}: not a GGUF file (only {size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return parse(Cursor(buf, os.path.basename(path)), path, size)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
