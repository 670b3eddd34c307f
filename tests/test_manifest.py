"""The lineage manifest: build, pretrain, sft and dpo outputs each verify, print their lineage
back to the source, catch a tampered shard, and hold no pickle."""

import json
from pathlib import Path

import pytest
from instruct_fixtures import facts, tiny_model_dir, write_jsonl

import dus.api
from dus.manifest import MANIFEST_FILE, format_lineage, read_manifest
from dus.read.source import PICKLE_SUFFIXES
from dus.verify.check import VerifyError

FAST = [
    "--lr",
    "2e-3",
    "--batch-size",
    "2",
    "--logging-steps",
    "1",
    "--seq-len",
    "64",
    "--no-gradient-checkpointing",
    "--max-steps",
    "2",
    "--dtype",
    "float32",
]
STAGES = ["build", "pretrain", "sft", "dpo"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """build -> pretrain -> sft -> dpo from a tiny random model, through the CLI."""
    from pydoc_data.topics import topics

    from dus.cli import main

    root = tmp_path_factory.mktemp("chain")
    rows = facts(8)
    write_jsonl(root / "text.jsonl", [{"text": topics[k]} for k in sorted(topics)[:40]])
    write_jsonl(root / "sft.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in rows])
    write_jsonl(root / "dpo.jsonl", [{"prompt": r["question"], "chosen": r["answer"], "rejected": "no"} for r in rows])
    runs = [
        ["build", tiny_model_dir(), root / "build", "--recipe", "stack"],
        [
            "pretrain",
            root / "build",
            "--data",
            root / "text.jsonl",
            "--output",
            root / "pretrain",
            "--seq-len",
            "64",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--save-every",
            "0",
            "--cache-dir",
            root / "cache",
        ],
        ["sft", root / "pretrain", "--data", root / "sft.jsonl", "-o", root / "sft", *FAST],
        ["dpo", root / "sft", "--data", root / "dpo.jsonl", "-o", root / "dpo", *FAST],
    ]
    for args in runs:
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert not e.code, f"dus {args[0]} failed"
    return root


def test_every_stage_verifies_and_prints_its_lineage(chain, run_dus):
    code, out, err = run_dus("verify", chain / "dpo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"verified {chain / 'dpo'}: 1 shard blake3 match")
    stages = [line.split()[1] if "<-" in line else line.split()[0] for line in lines[2:]]
    assert stages == ["dpo", "sft", "pretrain", "build", "source"]
    assert lines[-1].split()[2] == tiny_model_dir() and lines[-1].endswith("(base)")
    for stage in STAGES:
        report = dus.api.verify(chain / stage)
        assert [link["stage"] for link in report.lineage] == STAGES[STAGES.index(stage) :: -1] + ["source"]
    assert len(dus.api.verify(chain / "build").checks) == 5  # the byte-for-byte proof too


def test_manifests_record_command_parent_data_and_the_plan(chain):
    build = read_manifest(chain / "build")
    for parent, stage in zip(STAGES, STAGES[1:]):
        record = read_manifest(chain / stage)
        assert record["stage"] == stage and record["command"][0] == stage
        assert record["parent"]["ref"] == str(chain / parent) and record["parent"]["stage"] == parent
        assert record["plan"] == build["plan"]  # carried forward: --freeze original still reads it
    data = read_manifest(chain / "sft")["data"]
    assert list(data) == [str(chain / "sft.jsonl")] and data[str(chain / "sft.jsonl")]["bytes"] > 0
    assert json.loads((chain / "sft" / "training_args.json").read_text())["max_steps"] == 2


def test_no_pickle_in_any_output(chain):
    for stage in STAGES:
        pickles = [p for p in (chain / stage).rglob("*") if p.suffix in PICKLE_SUFFIXES]
        assert pickles == [], stage


@pytest.mark.parametrize("stage", STAGES)
def test_a_tampered_shard_is_caught(chain, stage, tmp_path):
    import shutil

    copy = tmp_path / stage
    shutil.copytree(chain / stage, copy, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    shard = copy / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55  # a weight byte, not the header
    shard.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=r"^verification failed: model.safetensors: (blake3|sha256) .* differs"):
        dus.api.verify(copy)


def test_a_changed_parent_breaks_the_chain(chain, tmp_path):
    import shutil

    for stage in ("pretrain", "sft"):
        shutil.copytree(chain / stage, tmp_path / stage, ignore=shutil.ignore_patterns("checkpoints"))
    record = read_manifest(tmp_path / "sft")
    record["parent"]["ref"] = str(tmp_path / "pretrain")
    (tmp_path / "sft" / MANIFEST_FILE).write_text(json.dumps(record))
    dus.api.verify(tmp_path / "sft")  # an exact copy of the parent is the same parent
    (tmp_path / "pretrain" / MANIFEST_FILE).write_text(json.dumps({**read_manifest(tmp_path / "pretrain"), "x": 1}))
    with pytest.raises(VerifyError, match=r"^verification failed: parent .*pretrain \(pretrain\) changed"):
        dus.api.verify(tmp_path / "sft")


def test_a_build_written_before_lineage_still_verifies(chain, tmp_path):
    import shutil

    shutil.copytree(chain / "build", tmp_path / "old")
    record = read_manifest(tmp_path / "old")
    for key in ("stage", "command", "options", "parent"):
        del record[key]
    (tmp_path / "old" / MANIFEST_FILE).write_text(json.dumps(record))
    report = dus.api.verify(tmp_path / "old")
    assert len(report.checks) == 5
    assert format_lineage(report.lineage).splitlines()[1].split()[:2] == ["build", str(Path(tmp_path / "old"))]
