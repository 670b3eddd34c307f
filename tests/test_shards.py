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
    plans = [[(0, 10)], [b"head", (5, 2_500_000), b"tail"], [], [(2_999_990, 10), b"x" * 70_000, (0, 1)],
             [(1000, 1_200_000)]]
    hasher = ShardHasher(workers, digest=DIGESTS[kind])
    for plan in plans:
        hasher.start()
        for part in plan:
            hasher.add_bytes(part) if isinstance(part, bytes) else hasher.add_range(source, part[0], part[1])
    expected = [DIGESTS[kind](b"".join(p if isinstance(p, bytes) else data[p[0]:p[0] + p[1]] for p in plan)).hexdigest()
                for plan in plans]
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
    hasher = ShardHasher(3)
    for _ in range(200):  # 600 MB of hashing queued
        hasher.start()
        hasher.add_range(source, 0, 3_000_000)
    hasher.cancel()
    assert not any(t.is_alive() for t in hasher._threads)
    assert len(hasher._digests) < 200


def test_a_build_hashed_by_several_workers_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "hash_workers", lambda n: min(n, 3))
    save_model("llama", tmp_path / "src")
    record = dus.api.build(str(tmp_path / "src"), tmp_path / "out", overlap=1, shard_size="40KB")
    files = record["output"]["shards"]
    assert len(files) > 3
    for name, entry in files.items():  # BLAKE3 by default
        assert entry == {"blake3": DIGESTS["blake3"]((tmp_path / "out" / name).read_bytes()).hexdigest(),
                         "bytes": (tmp_path / "out" / name).stat().st_size}
    assert json.loads((tmp_path / "out" / "dus_plan.json").read_text())["output"]["shards"] == files
    assert_verified(tmp_path / "out", layers=6)


def test_hash_workers_are_one_per_usable_cpu_and_shard(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [digest.hash_workers(n) for n in (0, 1, 3, 20)] == [1, 1, 3, 8]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert digest.hash_workers(20) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert digest.hash_workers(20) == 1


def test_the_digests_are_the_reference_ones():
    """BLAKE3 and SHA-256 of the empty input, as published: no keyed or truncated variant."""
    assert DIGESTS["blake3"](b"").hexdigest() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert DIGESTS["sha256"](b"").hexdigest() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_file_sha256_build_records_sha256_only(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    code, _, err = run_dus("build", tmp_path / "src", tmp_path / "out", "--overlap", "1", "--shard-size", "40KB",
                           "--file-sha256")
    assert code == 0, err
    files = json.loads((tmp_path / "out" / "dus_plan.json").read_text())["output"]["shards"]
    assert len(files) > 1
    for name, entry in files.items():
        assert entry == {"sha256": hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest(),
                         "bytes": (tmp_path / "out" / name).stat().st_size}
