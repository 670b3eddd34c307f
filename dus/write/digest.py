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
from collections.abc import Callable

import blake3

DIGESTS: dict[str, Callable] = {"blake3": blake3.blake3, "sha256": hashlib.sha256}
DEFAULT = "blake3"


def build_digest(file_sha256: bool = False) -> str:
    """The digest a build records: SHA-256 where Hub-compatible file hashes are wanted."""
    return "sha256" if file_sha256 else DEFAULT


def recorded_digest(shards: dict[str, dict]) -> str | None:
    """The one digest every shard entry of a dus_plan.json holds; None if they do not agree."""
    kinds = {tuple(k for k in DIGESTS if k in entry) for entry in shards.values()}
    if len(kinds) != 1 or len(kind := kinds.pop()) != 1:
        return None
    return kind[0]
