"""SFT then DPO on a tiny model through TRL: masks, EOS, weights move, loss falls."""

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from instruct_fixtures import facts, tiny_model_dir, write_jsonl
from refusal import assert_refused
from safetensors.torch import load_file

from dus.instruct.template import builtin_template

FAST = ["--lr", "2e-3", "--batch-size", "4", "--logging-steps", "1", "--seq-len", "128", "--no-gradient-checkpointing"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("instruct-data")
    rows = facts(24)
    write_jsonl(
        d / "sft.jsonl",
        [
            {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
            for r in rows
        ],
    )
    write_jsonl(
        d / "dpo.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "chosen": [{"role": "assistant", "content": r["answer"]}],
                "rejected": [{"role": "assistant", "content": "no idea sorry"}],
            }
            for r in rows
        ],
    )
    return d


def _losses(out: str) -> tuple[float, float]:
    first, last = re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups()
    return float(first), float(last)


def _weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def test_sft_masks_the_prompt_and_ends_with_eos(data, tmp_path):
    from dus.instruct.options import TrainOptions
    from dus.instruct.sft import sft_trainer

    trainer, report = sft_trainer(
        TrainOptions(
            tiny_model_dir(),
            [str(data / "sft.jsonl")],
            str(tmp_path),
            max_steps=1,
            dtype="float32",
            gradient_checkpointing=False,
        )
    )
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert report.kept == 24
    assert tok.decode(row["input_ids"]).startswith("<s>### User:\nwhat colour is")
    assert tok.decode(trained) == facts(24)[0]["answer"] + "</s>"


def test_sft_then_dpo(data, tmp_path, run_dus):
    base = tiny_model_dir()
    code, out, err = run_dus(
        "sft", base, "--data", data / "sft.jsonl", "-o", tmp_path / "sft", "--max-steps", "12", *FAST
    )
    assert code == 0, err
    first, last = _losses(out)
    assert last < first - 0.5
    assert "data: 24 examples, dropped 0 by task filter, 0 by n-gram overlap, 24 kept" in err
    sft_weights, base_weights = _weights(tmp_path / "sft"), _weights(base)
    assert any(not torch.equal(sft_weights[k], base_weights[k]) for k in base_weights)

    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "sft").chat_template == builtin_template("solar")

    code, out, err = run_dus(
        "dpo",
        tmp_path / "sft",
        "--data",
        data / "dpo.jsonl",
        "-o",
        tmp_path / "dpo",
        "--max-steps",
        "8",
        "--beta",
        "0.1",
        "--loss-type",
        "sigmoid",
        *FAST,
    )
    assert code == 0, err
    first, last = _losses(out)
    assert last < first
    dpo_weights = _weights(tmp_path / "dpo")
    assert any(not torch.equal(dpo_weights[k], sft_weights[k]) for k in sft_weights)


def test_sft_packing_runs(data, tmp_path, run_dus):
    code, out, err = run_dus(
        "sft",
        tiny_model_dir(),
        "--data",
        data / "sft.jsonl",
        "-o",
        tmp_path / "packed",
        "--max-steps",
        "2",
        "--packing",
        *FAST,
    )
    assert code == 0, err
    assert (tmp_path / "packed" / "model.safetensors").is_file()


def test_bad_input_is_one_line(data, tmp_path, run_dus):
    code, _, err = run_dus("sft", tiny_model_dir(), "--data", tmp_path / "none.jsonl", "-o", tmp_path / "x")
    assert_refused(code, err, "none.jsonl", outputs=tmp_path / "x")


def _pickles(root: Path) -> list[str]:
    """Files holding a pickle: raw (protocol 2+ starts with 0x80) or torch.save's zip around data.pkl."""
    import zipfile

    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.read_bytes()[:1] == b"\x80" or (
            zipfile.is_zipfile(path) and any(n.endswith(".pkl") for n in zipfile.ZipFile(path).namelist())
        ):
            found.append(str(path.relative_to(root)))
    return found


def test_checkpoints_and_the_model_hold_no_pickle(data, tmp_path, run_dus):
    """--save-steps writes checkpoint-N snapshots as Trainer does, minus its pickles: the model, its
    tokenizer, trainer_state.json and the arguments as training_args.json, nothing for torch.load."""
    code, _, err = run_dus(
        "sft",
        tiny_model_dir(),
        "--data",
        data / "sft.jsonl",
        "-o",
        tmp_path / "sft",
        "--max-steps",
        "2",
        "--save-steps",
        "1",
        *FAST,
    )
    assert code == 0, err
    out = tmp_path / "sft"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for directory in (out, out / "checkpoint-1", out / "checkpoint-2"):
        assert {"model.safetensors", "training_args.json", "config.json"} <= {p.name for p in directory.iterdir()}
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert _pickles(out) == []
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o666 & ~mask)  # readable as any file


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_failed_save_leaves_the_previous_model_or_none(data, tmp_path):
    """The final model is published into OUTPUT as one model (dus.core.publish.atomic_model_files):
    a save that fails after the weights are written leaves no model at all, or the previous one whole."""
    from dus.instruct.options import TrainOptions
    from dus.instruct.sft import sft_trainer
    from dus.instruct.trainer import finish
    from dus.manifest import MANIFEST_FILE

    out = tmp_path / "sft"
    opts = TrainOptions(
        tiny_model_dir(),
        [str(data / "sft.jsonl")],
        str(out),
        max_steps=1,
        dtype="float32",
        gradient_checkpointing=False,
    )
    trainer, report = sft_trainer(opts)
    tokenizer_save = trainer.processing_class.save_pretrained

    def fail(*args, **kwargs):  # Trainer._save writes the weights and config first, the tokenizer after
        raise OSError("the disk went away")

    trainer.processing_class.save_pretrained = fail
    with pytest.raises(OSError, match="went away"):
        finish(trainer, opts, report, "sft", {})
    assert _files(out) == {}  # no weights, no config, no staging directory, no lock
    assert [p.name for p in out.parent.iterdir() if p.name != "sft"] == []

    trainer.processing_class.save_pretrained = tokenizer_save
    finish(trainer, opts, report, "sft", {})
    before = _files(out)
    assert {"model.safetensors", "config.json", MANIFEST_FILE, "training_args.json"} <= set(before)
    trainer.processing_class.save_pretrained = fail
    with pytest.raises(OSError, match="went away"):
        finish(trainer, opts, report, "sft", {})
    assert _files(out) == before
