"""Safetensors shards written by moving bytes, not tensors.

A byte-copy tensor goes from source file to output file inside the kernel
(`os.copy_file_range`, falling back to `sendfile` and then to a bounded
buffer). Other threads hash each shard's planned bytes meanwhile (one shard
per thread, one thread per usable CPU), so the digest recorded for
`dus verify` (BLAKE3, or SHA-256: dus/write/digest.py) costs little extra
wall time.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable

from dus.errors import BuildError
from dus.plan.layout import TensorSpec
from dus.read.safetensors import encode_header
from dus.write.compute import tensor_bytes
from dus.write.digest import DEFAULT, DIGESTS
from dus.write.output import NO_SPACE, out_of_space

CHUNK = 64 * 1024 * 1024
HASH_CHUNK = 1024 * 1024  # stays in L2 between read and hash: faster than 8 MiB (docs/benchmarks.md)
METADATA = {"format": "pt"}


def split_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    # Not huggingface_hub's split_state_dict_into_shards_factory: it gives a tensor over max_bytes a shard
    # of its own ahead of the shard being filled, so the layers after it land in a later file (reordered).
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
                 progress: Callable[[int], None] = lambda n: None, digest: str = DEFAULT) -> dict[str, dict]:
    """Write every shard; return {file name: {digest: hex, "bytes": size}}, `digest` one of DIGESTS.

    The hash of a shard is computed from the bytes it is planned to hold (its
    header, the source byte ranges, computed tensors), in threads that run
    ahead of or behind the writer as the disk allows: hashing stays off the
    critical path, and `dus verify` compares the file on disk against it.
    """
    hasher = ShardHasher(hash_workers(len(shards)), digest=DIGESTS[digest])
    paths = [os.path.join(directory, name) for name in shard_names(len(shards))]
    done = 0  # shards written
    try:
        for path, specs in zip(paths, shards):
            write_shard(path, specs, hasher, progress)
            done += 1
    except BaseException as e:
        hasher.cancel()
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise _out_of_space(e, directory, paths[done], shards[done:]) from e
        raise
    digests = hasher.finish()
    return {os.path.basename(p): {digest: d, "bytes": os.path.getsize(p)} for p, d in zip(paths, digests)}


def write_shard(path: str, specs: list[TensorSpec], hasher: "ShardHasher",
                progress: Callable[[int], None] = lambda n: None) -> None:
    """Write one shard, handing `hasher` every byte range it holds, in order."""
    header = _header(specs)
    sources: dict[str, int] = {}
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        hasher.start()
        hasher.add_bytes(header)
        _write_all(out, header)
        for spec in specs:
            if spec.is_byte_copy:
                info = spec.parts[0][0]
                if info.path not in sources:
                    sources[info.path] = os.open(info.path, os.O_RDONLY)
                hasher.add_range(info.path, info.start, info.nbytes)
                copy_range(sources[info.path], out, info.start, info.nbytes)
            else:
                data = tensor_bytes(spec)
                hasher.add_bytes(data)
                _write_all(out, data)
            progress(spec.nbytes)
    finally:
        os.close(out)
        for fd in sources.values():
            os.close(fd)


def _header(specs: list[TensorSpec]) -> bytes:
    return encode_header({s.name: (s.dtype, s.shape, s.nbytes) for s in specs}, METADATA)


def _out_of_space(e: OSError, directory: str, path: str, left: list[list[TensorSpec]]) -> BuildError:
    """Name the shard that did not fit and what the rest of the shards need.

    The directory named is the one the user chose: the staging directory
    written into is hidden, and removed on the way out.
    """
    planned = sum(len(_header(specs)) + sum(s.nbytes for s in specs) for specs in left)
    written = os.path.getsize(path) if os.path.exists(path) else 0
    return out_of_space(e, os.path.dirname(os.path.abspath(directory)), os.path.basename(path), planned - written)


def copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Append src[offset:offset+count] to dst, in the kernel where it can."""
    while count:
        try:
            moved = os.copy_file_range(src, dst, min(count, 1 << 30), offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
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


def hash_workers(shards: int) -> int:
    """Threads to hash `shards` shards: one per usable CPU, at most one per shard.

    Not one fewer to leave the copy a core: with SHA-256 hashing, not the copy,
    is the longest pole, and a second thread hashing the last shard while the
    first still hashes the one before brings a 2-vCPU build closer to the
    byte-copy floor (docs/benchmarks.md). BLAKE3 keeps up with the copy on one
    thread, so the others mostly wait, costing nothing.
    """
    # The CPUs this process may run on (a container's limit), not the host's count.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(shards, cpus))


class ShardHasher:
    """A digest of each shard's planned bytes (`digest()` makes one: BLAKE3 by
    default, see dus/write/digest.py), shards hashed side by side.

    `start()` begins a shard; `add_range` names source bytes (read from the page
    cache with the worker's own descriptors), `add_bytes` hands over bytes.
    A digest is sequential within a shard, so each shard goes to one of `workers`
    threads, in order: with one worker hashing trails the writer shard by shard,
    with more, shards are hashed at once where cores allow (one SHA-256 thread
    is slower than a page-cache copy on a fast machine, one BLAKE3 thread is
    not: docs/benchmarks.md). At most
    `max_pending_bytes_items` handed-over byte strings wait in memory:
    `add_bytes` blocks when the workers fall that far behind.
    """

    def __init__(self, workers: int = 1, max_pending_bytes_items: int = 2, digest: Callable = DIGESTS[DEFAULT]):
        self._digest = digest
        self._shards: queue.SimpleQueue = queue.SimpleQueue()  # (index, that shard's item queue), in order
        self._items: queue.SimpleQueue | None = None
        self._started = 0
        self._room = threading.Semaphore(max_pending_bytes_items)
        self._digests: dict[int, str] = {}
        self._error: BaseException | None = None
        self._cancelled = False
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def start(self) -> None:
        self._end_shard()
        self._items = queue.SimpleQueue()
        self._shards.put((self._started, self._items))
        self._started += 1

    def add_range(self, path: str, start: int, nbytes: int) -> None:
        self._items.put(("range", path, start, nbytes))

    def add_bytes(self, data: bytes) -> None:
        while not self._stopped() and not self._room.acquire(timeout=0.1):
            pass
        if self._stopped():  # finish() will report why
            return
        self._items.put(("bytes", data))

    def _end_shard(self) -> None:
        if self._items is not None:
            self._items.put(None)

    def _work(self) -> None:
        files: dict[str, int] = {}
        buffer = bytearray(HASH_CHUNK)  # reused: a fresh 1 MiB bytes per read costs ~5% of hash speed
        try:
            while (job := self._shards.get()) is not None and not self._stopped():
                index, items = job
                digest = self._digest()  # its update() releases the GIL, as hashlib's does
                while (item := items.get()) is not None and not self._stopped():
                    if item[0] == "bytes":
                        digest.update(item[1])
                        self._room.release()
                    else:
                        _, path, position, nbytes = item
                        fd = files.get(path) or files.setdefault(path, os.open(path, os.O_RDONLY))
                        _hash_range(digest, fd, path, position, nbytes, buffer)
                self._digests[index] = digest.hexdigest()
        except BaseException as e:  # reported by finish()
            self._error = self._error or e
        finally:
            for fd in files.values():
                os.close(fd)

    def _stopped(self) -> bool:
        return self._cancelled or self._error is not None

    def _stop_workers(self) -> None:
        self._end_shard()
        for _ in self._threads:
            self._shards.put(None)
        for thread in self._threads:
            thread.join()

    def finish(self) -> list[str]:
        """Wait for the hashes: one hex digest per started shard, in order."""
        self._stop_workers()
        if self._error:
            raise self._error
        return [self._digests[i] for i in range(self._started)]

    def cancel(self) -> None:
        self._cancelled = True
        self._stop_workers()


def _hash_range(digest, fd: int, path: str, position: int, nbytes: int, buffer: bytearray) -> None:
    view = memoryview(buffer)
    end = position + nbytes
    while position < end:
        got = _pread_into(fd, view[:end - position], position)
        if not got:
            raise BuildError(f"{os.path.basename(path)} ended inside a tensor its header promised")
        digest.update(view[:got])
        position += got


def _pread_into(fd: int, view: memoryview, position: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], position)
    data = os.pread(fd, len(view), position)  # macOS before 11: no preadv
    view[:len(data)] = data
    return len(data)
