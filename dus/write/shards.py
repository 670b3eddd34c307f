"""Safetensors shards written by moving bytes, not tensors.

A byte-copy tensor goes from source file to output file inside the kernel
(`os.copy_file_range`, falling back to `sendfile` and then to a bounded
buffer). Other threads hash each shard's planned bytes meanwhile (one shard
per thread, one thread per usable CPU), so the digest recorded for
`dus verify` (BLAKE3, or SHA-256: dus/core/digest.py) costs little extra
wall time.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from dus.core.digest import DEFAULT, DIGESTS, ShardHasher, hash_workers
from dus.core.publish import NO_SPACE, out_of_space
from dus.errors import BuildError
from dus.plan.layout import TensorSpec
from dus.read.safetensors import encode_header
from dus.write.compute import tensor_bytes
from dus.write.gather import block_chunks, block_ranges

CHUNK = 64 * 1024 * 1024
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


def write_shards(
    directory: str,
    shards: list[list[TensorSpec]],
    progress: Callable[[int], None] = lambda n: None,
    digest: str = DEFAULT,
) -> dict[str, dict]:
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


def write_shard(
    path: str, specs: list[TensorSpec], hasher: ShardHasher, progress: Callable[[int], None] = lambda n: None
) -> None:
    """Write one shard, handing `hasher` every byte range it holds, in order."""
    header = _header(specs)
    sources: dict[str, int] = {}
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        hasher.start()
        hasher.add_bytes(header)
        _write_all(out, header)
        for spec in specs:
            ranges = _copied_ranges(spec)
            if ranges is not None:
                for path, start, nbytes in ranges:
                    if path not in sources:
                        sources[path] = os.open(path, os.O_RDONLY)
                    hasher.add_range(path, start, nbytes)
                    copy_range(sources[path], out, start, nbytes)
            elif spec.is_block_copy:
                for data in block_chunks(spec):
                    hasher.add_bytes(data)
                    _write_all(out, data)
            else:
                data = tensor_bytes(spec)
                hasher.add_bytes(data)
                _write_all(out, data)
            progress(spec.nbytes)
    finally:
        os.close(out)
        for fd in sources.values():
            os.close(fd)


def _copied_ranges(spec: TensorSpec) -> list[tuple[str, int, int]] | None:
    """The source byte ranges a tensor is, in order, where it is copied range by range; else None."""
    if spec.is_byte_copy:
        info = spec.parts[0][0]
        return [(info.path, info.start, info.nbytes)]
    return block_ranges(spec) if spec.is_block_copy else None


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
        view = view[os.write(fd, view) :]
