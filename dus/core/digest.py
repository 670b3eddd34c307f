"""The digest of each shard recorded in dus_plan.json, and the one `dus verify` checks.

BLAKE3 by default: one BLAKE3 thread keeps ahead of a kernel copy from the
page cache where one SHA-256 thread falls behind it and becomes the build's
long pole (measured in docs/benchmarks.md, "Hashing beside the copy"). SHA-256
on request (`dus build --file-sha256`): the file hash the Hub shows. A build
records one of them per shard, `{"blake3": hex, "bytes": n}` or
`{"sha256": hex, "bytes": n}`; manifests written before BLAKE3 hold sha256.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import blake3

from dus.errors import BuildError

DIGESTS: dict[str, Callable] = {"blake3": blake3.blake3, "sha256": hashlib.sha256}
DEFAULT = "blake3"
HASH_CHUNK = 1024 * 1024  # stays in L2 between read and hash: faster than 8 MiB (docs/benchmarks.md)


def build_digest(file_sha256: bool = False) -> str:
    """The digest a build records: SHA-256 where Hub-compatible file hashes are wanted."""
    return "sha256" if file_sha256 else DEFAULT


def recorded_digest(shards: dict[str, dict]) -> str | None:
    """The one digest every shard entry of a dus_plan.json holds; None if they do not agree."""
    kinds = {tuple(k for k in DIGESTS if k in entry) for entry in shards.values()}
    if len(kinds) != 1 or len(kind := kinds.pop()) != 1:
        return None
    return kind[0]


def file_digest(path: Path, kind: str = DEFAULT) -> dict:
    """`{kind: hex, "bytes": n}` of a file on disk, the entry a build records per shard."""
    h, n = DIGESTS[kind](), 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return {kind: h.hexdigest(), "bytes": n}


def shard_digests(directory: Path, kind: str = DEFAULT) -> dict[str, dict]:
    """{shard name: file_digest} of every `*.safetensors` file in DIRECTORY."""
    return {p.name: file_digest(p, kind) for p in sorted(Path(directory).glob("*.safetensors"))}


def file_digests(paths: list[Path], kind: str = DEFAULT) -> list[str]:
    """Hex digests of whole files, hashed side by side, one thread per usable CPU (the build's hasher)."""
    hasher = ShardHasher(hash_workers(len(paths)), digest=DIGESTS[kind])
    for p in paths:
        hasher.start()
        hasher.add_range(str(p), 0, Path(p).stat().st_size)
    return hasher.finish()


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
    default, see DIGESTS), shards hashed side by side.

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
        got = _pread_into(fd, view[: end - position], position)
        if not got:
            raise BuildError(f"{os.path.basename(path)} ended inside a tensor its header promised")
        digest.update(view[:got])
        position += got


def _pread_into(fd: int, view: memoryview, position: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], position)
    data = os.pread(fd, len(view), position)  # macOS before 11: no preadv
    view[: len(data)] = data
    return len(data)
