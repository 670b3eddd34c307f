"""`dus pretrain --resume` treats checkpoints as untrusted: a pickled call in DCP's `.metadata` is never run,
every file is checked against the sha256 record written at save time before any of it is loaded, a bad
checkpoint is one `error:` line (exit 2) with nothing trained, and only recorded checkpoints are resumed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from pretrain_helpers import make_model, read_jsonl, run_ranks, torchrun_pretrain
from refusal import assert_refused, snapshot

from dus.errors import InputError
from dus.train import pretrain
from dus.train.checkpoint import RECORD, Checkpointer, MetadataUnpickler, rng_state, set_rng_state, write_record
from dus.train.parallel import Dist

SHARD = "__0_0.distcp"


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.fixture(scope="module")
def paused(tiny_model, corpus, cache, tmp_path_factory) -> Path:
    """A run of 6 steps stopped after 4, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("paused") / "run"
    pretrain(
        {
            "model": str(tiny_model),
            "data": [str(corpus["train"])],
            "output": str(out),
            "seq_len": 64,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 2,
            "log_every": 1,
            "max_steps": 6,
            "save_every": 2,
            "stop_after": 4,
            "cache_dir": str(cache),
        }
    )
    return out


@pytest.fixture
def resume(tiny_model, corpus, cache, paused, tmp_path, run_dus):
    """A copy of the paused run, and a function that resumes it through the CLI: (exit code, stderr)."""
    out = tmp_path / "run"
    shutil.copytree(paused, out)

    def resume(model: Path = tiny_model) -> tuple[int, str]:
        code, _, err = run_dus(
            "pretrain",
            model,
            "--data",
            corpus["train"],
            "--output",
            out,
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "2",
            "--log-every",
            "1",
            "--max-steps",
            "6",
            "--save-every",
            "2",
            "--cache-dir",
            cache,
            "--resume",
        )
        return code, err.strip()

    resume.out = out
    return resume


def rerecord(checkpoint: Path, name: str) -> None:
    """What an attacker who can write the checkpoint can do: make the record match the changed file."""
    record = json.loads((checkpoint / RECORD).read_text())
    data = (checkpoint / name).read_bytes()
    record["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / RECORD).write_text(json.dumps(record))


@pytest.mark.parametrize("rewrite_record", [False, True], ids=["digest-differs", "digest-rewritten"])
def test_pickled_call_in_metadata_never_runs(resume, tmp_path, rewrite_record):
    checkpoint = resume.out / "checkpoints" / "step_00000004"
    marker = tmp_path / "marker"
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # our own file, trusted here
    metadata.storage_meta.modules = [RunsCode(marker)]  # deep inside a valid Metadata
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    if rewrite_record:
        rerecord(checkpoint, ".metadata")
    before = snapshot(resume.out)
    code, err = resume()
    assert not marker.exists()
    why = "refusing to unpickle posix.system" if rewrite_record else "the checkpoint is modified"
    assert_refused(code, err, str(checkpoint / ".metadata"), why, unchanged=(resume.out, before))


def test_bare_payload_as_metadata_never_runs(resume, tmp_path):
    checkpoint = resume.out / "checkpoints" / "step_00000004"
    marker = tmp_path / "marker"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    rerecord(checkpoint, ".metadata")
    before = snapshot(resume.out)
    code, err = resume()
    assert not marker.exists()
    assert_refused(code, err, "refusing to unpickle posix.system", unchanged=(resume.out, before))


@pytest.mark.parametrize(
    "obj", [eval, os.system, torch.load, shutil.rmtree, torch.Tensor, RunsCode], ids=lambda o: o.__name__
)
def test_metadata_unpickler_admits_only_metadata_classes(obj, tmp_path):
    with pytest.raises(InputError, match=f"refusing to unpickle .*{obj.__name__}"):
        MetadataUnpickler(io.BytesIO(pickle.dumps(obj)), tmp_path / ".metadata").load()
    safe = [torch.bfloat16, torch.Size([2, 3]), torch.strided, Path("/x")]
    assert MetadataUnpickler(io.BytesIO(pickle.dumps(safe)), tmp_path / ".metadata").load() == safe


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_saved_items_load_weights_only(tmp_path):
    """An item of the checkpoint that pickles a call (as our trainer state once did) is refused, not run."""
    marker, checkpoint = tmp_path / "marker", tmp_path / "checkpoints" / "step_00000001"
    dcp.save({"trainer": RunsCode(marker)}, checkpoint_id=checkpoint, no_dist=True)
    write_record(checkpoint, 1)
    ckpt = Checkpointer(checkpoint.parent, Dist(), keep=2)
    ckpt.check(checkpoint)
    with pytest.raises(
        InputError, match="refusing to unpickle item 'trainer': only tensors and plain data .*posix.system"
    ):
        ckpt.load_shared(checkpoint)
    assert not marker.exists()


def _truncate(checkpoint: Path) -> str:
    shard = checkpoint / SHARD
    shard.write_bytes(shard.read_bytes()[:-100])
    return "truncated"


def _flip_bit(checkpoint: Path, name: str = SHARD) -> str:
    data = bytearray((checkpoint / name).read_bytes())
    data[len(data) // 2] ^= 0x10  # inside a tensor's bytes: today this resumes with a wrong weight
    (checkpoint / name).write_bytes(bytes(data))
    return "sha256 differs"


def _missing_shard(checkpoint: Path) -> str:
    (checkpoint / SHARD).unlink()
    return "missing"


@pytest.mark.parametrize("damage", [_truncate, _flip_bit, _missing_shard], ids=["truncated", "bit-flip", "missing"])
def test_damaged_shard_is_one_line_and_nothing_runs(resume, damage):
    checkpoint = resume.out / "checkpoints" / "step_00000004"
    why = damage(checkpoint)
    before = snapshot(resume.out)
    code, err = resume()
    assert_refused(code, err, str(checkpoint / SHARD), why, unchanged=(resume.out, before))


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        '{"format": "dus-checkpoint/1", "step": 4, "step": 4}',
        '{"format": "dus-checkpoint/1", "step": 4, "files": {"../x": {}}}',
    ],
    ids=["not-json", "duplicate-key", "escaping-name"],
)
def test_damaged_record_is_refused(resume, record):
    checkpoint = resume.out / "checkpoints" / "step_00000004"
    (checkpoint / RECORD).write_text(record)
    before = snapshot(resume.out)
    code, err = resume()
    assert_refused(code, err, str(checkpoint / RECORD), "not a valid checkpoint record", unchanged=(resume.out, before))


def test_checkpoint_without_record_is_skipped(resume):
    """A save killed after DCP finished but before its record: resume from the checkpoint before it."""
    (resume.out / "checkpoints" / "step_00000004" / RECORD).unlink()
    code, err = resume()
    assert code == 0, err
    info = json.loads((resume.out / "run.json").read_text())
    assert info["resumed_from"].endswith("step_00000002") and info["result"]["finished"]
    assert [r["step"] for r in read_jsonl(resume.out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (resume.out / "checkpoints" / "step_00000004" / RECORD).is_file()  # saved again, whole


def test_no_recorded_checkpoint_is_refused(resume):
    """Checkpoints by a dus before records (they pickled the trainer state) are not loaded."""
    for record in (resume.out / "checkpoints").glob(f"*/{RECORD}"):
        record.unlink()
    before = snapshot(resume.out)
    code, err = resume()
    assert_refused(code, err, "step_00000004", f"has no {RECORD}", unchanged=(resume.out, before))


def test_checkpoint_of_another_model_is_refused(resume, tmp_path):
    """DCP alone loads a deeper model's checkpoint into a shallower one without a word."""
    shallower = make_model(tmp_path / "two-layers", layers=2)
    before = snapshot(resume.out)
    code, err = resume(shallower)
    assert_refused(
        code, err, "step_00000004 holds another model", "model.model.layers.2.", unchanged=(resume.out, before)
    )


def test_record_lists_every_file_and_state_loads_weights_only(paused):
    """The record lists every file with its sha256; the trainer state is JSON, read back with weights_only."""
    checkpoint = paused / "checkpoints" / "step_00000004"
    record = json.loads((checkpoint / RECORD).read_text())
    assert record["step"] == 4 and set(record["files"]) == {".metadata", SHARD}
    for name, entry in record["files"].items():
        data = (checkpoint / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ckpt = Checkpointer(paused / "checkpoints", Dist(), keep=2)
    assert ckpt.latest() == checkpoint
    ckpt.check(checkpoint)
    shared = ckpt.load_shared(checkpoint)
    assert shared["step"] == 4 and shared["layout"]["seq_len"] == 64


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # cached Gaussians are part of the state
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state)
    got = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.slow
def test_two_ranks_refuse_a_damaged_shard_together(tiny_model, corpus, tmp_path):
    """Rank 0 checks the record and every rank gets its verdict: both stop, neither waits for the other."""
    out = tmp_path / "fsdp"
    cmd = torchrun_pretrain(tiny_model, corpus, out, tmp_path / "cache", "--max-steps", "4", "--save-every", "2")
    first = run_ranks(cmd + ["--stop-after", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = out / "checkpoints" / "step_00000002"
    assert set(json.loads((checkpoint / RECORD).read_text())["files"]) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    _flip_bit(checkpoint, "__1_0.distcp")  # rank 1's shard
    before = snapshot(out)
    done = run_ranks(cmd + ["--resume"])
    # one error from each rank (two processes share stderr, so their lines may run together)
    refusal = f"error: {checkpoint / '__1_0.distcp'}: sha256 differs"
    assert done.returncode != 0 and done.stderr.count(refusal) == 2, done.stderr[-3000:]
    assert done.stderr.count("error:") == 2, done.stderr[-3000:]
    assert snapshot(out) == before


def test_a_failure_of_the_run_while_loading_is_not_bad_input(paused, monkeypatch):
    """Out of memory or a failed collective while loading (RuntimeError, alone or inside DCP's
    CheckpointException) is the run's failure and propagates; a malformed state is still an InputError."""
    from torch.distributed.checkpoint.api import CheckpointException

    import dus.train.checkpoint as checkpoint

    path = paused / "checkpoints" / "step_00000004"
    ckpt = Checkpointer(paused / "checkpoints", Dist(), keep=2)
    ckpt.check(path)
    for raised, expected in [
        (RuntimeError("CUDA out of memory"), RuntimeError),
        (CheckpointException("load", {0: (RuntimeError("gloo: connection reset"), None)}), RuntimeError),
        (CheckpointException("load", {0: (ValueError("bad size"), None)}), InputError),
    ]:

        def fail(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(checkpoint.dcp, "load", fail)
        with pytest.raises(BaseException) as caught:  # CheckpointException is a BaseException
            ckpt.load_shared(path)
        assert type(caught.value) is expected, caught.value


def test_out_of_memory_while_resuming_is_exit_1_not_does_not_fit(resume, monkeypatch):
    import dus.train.checkpoint as checkpoint

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(checkpoint, "set_state_dict", out_of_memory)
    code, err = resume()
    line = assert_refused(code, err, "RuntimeError: CUDA out of memory", exit_code=1)
    assert "does not fit" not in line


def test_a_saved_state_of_another_shape_is_refused(paused, tmp_path):
    """Same entries, another hidden size: refused by shape before DCP or torch raise anything."""
    from dus.train.checkpoint import _check_fit

    path = paused / "checkpoints" / "step_00000004"
    ckpt = Checkpointer(paused / "checkpoints", Dist(), keep=2)
    ckpt.check(path)
    metadata = ckpt._metadata(path)
    tensors = sorted(k for k, v in metadata.state_dict_metadata.items() if type(v).__name__ == "TensorStorageMetadata")
    state = {key: torch.zeros(7, 3) if key in tensors else 0 for key in metadata.state_dict_metadata}
    name = tensors[0]
    with pytest.raises(InputError, match=f"{name!r} is .* there, \\[7, 3\\] in this run"):
        _check_fit(path, metadata, state)


def test_an_rng_state_of_the_wrong_size_is_malformed():
    state = json.loads(json.dumps(rng_state()))
    state["torch"] = state["torch"][:8]
    with pytest.raises(ValueError, match="RNG state"):
        set_rng_state(state)
