"""ShardHasher: per-shard digests (BLAKE3, SHA-256) from source ranges and handed-over bytes, with one or many
workers."""

import hashlib
import json
import os
import threading

import pytest
from models import assert_verified, save_model

import dus.api
import dus.write.shards as shards
from dus.core import digest
from dus.core.digest import DIGESTS, ShardHasher
from dus.errors import BuildError


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(3_000_000))
    return str(path)


@pytest.mark.parametrize("kind", ["blake3", "sha256"])
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("has_preadv", [True, False], ids=["preadv", "pread"])
def test_digests_match_the_planned_bytes(source, workers, has_preadv, kind, monkeypatch):
    if not has_preadv:  # as on macOS before 11
        monkeypatch.delattr(os, "preadv", raising=False)
    data = open(source, "rb").read()
    plans = [
        [(0, 10)],
        [b"head", (5, 2_500_000), b"tail"],
        [],
        [(2_999_990, 10), b"x" * 70_000, (0, 1)],
        [(1000, 1_200_000)],
    ]
    hasher = ShardHasher(workers, digest=DIGESTS[kind])
    for plan in plans:
        hasher.start()
        for part in plan:
            hasher.add_bytes(part) if isinstance(part, bytes) else hasher.add_range(source, part[0], part[1])
    expected = [
        DIGESTS[kind](b"".join(p if isinstance(p, bytes) else data[p[0] : p[0] + p[1]] for p in plan)).hexdigest()
        for plan in plans
    ]
    assert hasher.finish() == expected


@pytest.mark.parametrize("workers", [1, 3])
def test_a_short_source_fails_and_does_not_block_the_writer(source, workers):
    hasher = ShardHasher(workers, max_pending_bytes_items=1)
    hasher.start()
    hasher.add_range(source, 2_999_000, 5_000)  # past the end of the file
    done = threading.Event()

    def writer():
        for _ in range(50):  # more than fit: would block forever if the stopped workers were awaited
            hasher.add_bytes(b"y" * 1000)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert done.wait(10)
    with pytest.raises(BuildError, match="ended inside a tensor"):
        hasher.finish()


def test_cancel_stops_every_worker_before_the_queued_work_is_done(source):
    """Every worker is held inside its first digest update until the hasher is cancelled, so how far the
    work got does not depend on timing: cancel() returns with no worker thread left and almost all of the
    queued 600 MB unread."""
    started, release, updates = threading.Event(), threading.Event(), []

    class HeldDigest:
        def update(self, data):
            updates.append(len(data))
            started.set()
            release.wait()

        def hexdigest(self):
            return "held"

    before = set(threading.enumerate())
    hasher = ShardHasher(3, max_pending_bytes_items=0, digest=HeldDigest)
    for _ in range(200):  # 600 MB of hashing queued
        hasher.start()
        hasher.add_range(source, 0, 3_000_000)
    assert started.wait(30)
    canceller = threading.Thread(target=hasher.cancel)
    canceller.start()
    adder = threading.Thread(target=hasher.add_bytes, args=(b"x",), daemon=True)
    adder.start()  # with no room for handed-over bytes, add_bytes returns only once the hasher is stopped
    adder.join(30)
    assert not adder.is_alive()
    release.set()
    canceller.join(30)
    assert not canceller.is_alive()
    assert set(threading.enumerate()) - before == set()  # every worker has ended
    assert len(updates) <= 3 * 3  # each worker finishes at most the 3 MB range it was in: 3 chunks of 1 MiB


def test_a_build_hashed_by_several_workers_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "hash_workers", lambda n: min(n, 3))
    save_model("llama", tmp_path / "src")
    record = dus.api.build(str(tmp_path / "src"), tmp_path / "out", overlap=1, shard_size="40KB")
    files = record["output"]["shards"]
    assert len(files) > 3
    for name, entry in files.items():  # BLAKE3 by default
        assert entry == {
            "blake3": DIGESTS["blake3"]((tmp_path / "out" / name).read_bytes()).hexdigest(),
            "bytes": (tmp_path / "out" / name).stat().st_size,
        }
    assert json.loads((tmp_path / "out" / "dus_plan.json").read_text())["output"]["shards"] == files
    assert_verified(tmp_path / "out", layers=6)


def test_hash_workers_are_one_per_usable_cpu_and_shard(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [digest.hash_workers(n) for n in (0, 1, 3, 20)] == [1, 1, 3, 8]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert digest.hash_workers(20) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert digest.hash_workers(20) == 1


# Published test vectors: SHA-256 from FIPS 180-2 (appendix B), BLAKE3 from its reference implementation.
VECTORS = [
    ("sha256", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ("sha256", b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ("blake3", b"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
    ("blake3", b"abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"),
]


@pytest.mark.parametrize(
    "kind, data, expected", VECTORS, ids=["sha256-abc", "sha256-million-a", "blake3-empty", "blake3-abc"]
)
def test_the_digests_are_the_reference_ones(tmp_path, monkeypatch, kind, data, expected):
    """What dus records for a shard (ShardHasher, from source ranges and handed-over bytes, read in chunks
    smaller than the input) and what verify recomputes (file_digest) are the published digests."""
    monkeypatch.setattr(digest, "HASH_CHUNK", 4096)
    path = tmp_path / "vector"
    path.write_bytes(data)
    half = len(data) // 2
    hasher = ShardHasher(2, digest=DIGESTS[kind])
    hasher.start()
    hasher.add_range(str(path), 0, half)
    hasher.add_bytes(data[half:])
    hasher.start()
    hasher.add_range(str(path), 0, len(data))
    assert hasher.finish() == [expected, expected]
    assert digest.file_digest(path, kind) == {kind: expected, "bytes": len(data)}


def test_file_sha256_build_records_sha256_only(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    code, _, err = run_dus(
        "build", tmp_path / "src", tmp_path / "out", "--overlap", "1", "--shard-size", "40KB", "--file-sha256"
    )
    assert code == 0, err
    files = json.loads((tmp_path / "out" / "dus_plan.json").read_text())["output"]["shards"]
    assert len(files) > 1
    for name, entry in files.items():
        assert entry == {
            "sha256": hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest(),
            "bytes": (tmp_path / "out" / name).stat().st_size,
        }
