"""Safetensors shards written by moving bytes, not tensors.

A byte-copy tensor goes from source file to output file inside the kernel
(`os.copy_file_range`, falling back to `sendfile` and then to a bounded
buffer). A second thread hashes each shard as it is written, so the sha256
recorded for `dus verify` costs almost no extra wall time on two cores.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from typing import Callable

from dus.errors import BuildError
from dus.plan.layout import TensorSpec
from dus.read.safetensors import encode_header
from dus.write.compute import tensor_bytes

CHUNK = 64 * 1024 * 1024
HASH_CHUNK = 8 * 1024 * 1024
METADATA = {"format": "pt"}


def split_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(directory: str, shards: list[list[TensorSpec]],
                 progress: Callable[[int], None] = lambda n: None) -> dict[str, dict]:
    """Write every shard; return {file name: {"sha256", "bytes"}}.

    One hashing thread follows the writer across all shards, so a shard's hash
    may still be catching up while the next shard is written: hashing stays
    off the critical path and its memory is one chunk, however many shards.
    """
    hasher = _Hasher()
    paths = [os.path.join(directory, name) for name in shard_names(len(shards))]
    try:
        for path, specs in zip(paths, shards):
            write_shard(path, specs, hasher, progress)
    except BaseException:
        hasher.cancel()
        raise
    digests = hasher.finish()
    return {os.path.basename(p): {"sha256": digests[p], "bytes": os.path.getsize(p)} for p in paths}


def write_shard(path: str, specs: list[TensorSpec], hasher: "_Hasher",
                progress: Callable[[int], None] = lambda n: None) -> None:
    """Write one shard, telling `hasher` about every byte range as it lands."""
    header = encode_header({s.name: (s.dtype, s.shape, s.nbytes) for s in specs}, METADATA)
    sources: dict[str, int] = {}
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        hasher.start(path)
        _write_all(out, header)
        hasher.add(len(header))
        for spec in specs:
            if spec.is_byte_copy:
                info = spec.parts[0][0]
                if info.path not in sources:
                    sources[info.path] = os.open(info.path, os.O_RDONLY)
                copy_range(sources[info.path], out, info.start, info.nbytes)
            else:
                _write_all(out, tensor_bytes(spec))
            hasher.add(spec.nbytes)
            progress(spec.nbytes)
    finally:
        os.close(out)
        for fd in sources.values():
            os.close(fd)


def copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Append src[offset:offset+count] to dst, in the kernel where it can."""
    while count:
        try:
            moved = os.copy_file_range(src, dst, min(count, 1 << 30), offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
                raise
            return _copy_fallback(src, dst, offset, count)
        if moved == 0:
            raise BuildError("a source file ended before the tensor its header promised")
        offset += moved
        count -= moved


def _copy_fallback(src: int, dst: int, offset: int, count: int) -> None:
    while count:
        try:
            moved = os.sendfile(dst, src, offset, min(count, 1 << 30))
        except OSError:
            chunk = os.pread(src, min(count, CHUNK), offset)
            moved = len(chunk)
            _write_all(dst, chunk)
        if moved == 0:
            raise BuildError("a source file ended before the tensor its header promised")
        offset += moved
        count -= moved


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Hasher:
    """sha256 of files being appended to, computed by one reader thread.

    `start(path)` begins a file, `add(n)` announces that n more of its bytes are
    on disk; the thread hashes them with its own descriptor (from the page
    cache) while the writer goes on.
    """

    def __init__(self):
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._digests: dict[str, str] = {}
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self, path: str) -> None:
        self._todo.put(path)

    def add(self, nbytes: int) -> None:
        self._todo.put(nbytes)

    def _run(self) -> None:
        fd, path, digest, position = None, None, None, 0
        try:
            while (item := self._todo.get()) is not None and not self._cancelled:
                if isinstance(item, str):
                    if fd is not None:
                        os.close(fd)
                        self._digests[path] = digest.hexdigest()
                    fd, path, digest, position = os.open(item, os.O_RDONLY), item, hashlib.sha256(), 0
                    continue
                end = position + item
                while position < end:
                    chunk = os.pread(fd, min(HASH_CHUNK, end - position), position)
                    if not chunk:
                        raise BuildError(f"{os.path.basename(path)} is shorter than written")
                    digest.update(chunk)
                    position += len(chunk)
            if fd is not None and not self._cancelled:
                self._digests[path] = digest.hexdigest()
        except BaseException as e:  # reported by finish()
            self._error = e
        finally:
            if fd is not None:
                os.close(fd)

    def finish(self) -> dict[str, str]:
        """Wait for the hashes: {path: sha256 hex}."""
        self._todo.put(None)
        self._thread.join()
        if self._error:
            raise self._error
        return self._digests

    def cancel(self) -> None:
        self._cancelled = True
        self._todo.put(None)
        self._thread.join()
