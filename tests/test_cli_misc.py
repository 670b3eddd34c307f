"""One voice for every command: `dus --version`, quiet libraries unless --verbose, skipping pretrain's final
checkpoint."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
from instruct_fixtures import facts, tiny_model_dir, write_jsonl

import dus
from dus.quiet import QUIET_LOGGERS, quiet


def test_version(run_dus):
    code, out, err = run_dus("--version")
    assert (code, out, err) == (0, f"dus {dus.__version__}\n", "")


def _alias_warnings(verbose: bool) -> list[str]:
    """Call the deprecated transformers aliases TRL calls, after quiet(verbose); return the FutureWarnings raised."""
    from instruct_fixtures import make_model, make_tokenizer

    model = make_model(make_tokenizer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet(verbose):
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
            model.gradient_checkpointing_disable()
            assert (logging.getLogger("lm_eval").getEffectiveLevel() == logging.ERROR) is not verbose
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_known_warnings_silenced_unless_verbose():
    assert len(_alias_warnings(verbose=True)) == 3  # the three seen in SFT/DPO logs
    assert _alias_warnings(verbose=False) == []


def _library_state() -> dict:
    import datasets
    import huggingface_hub.utils
    import lm_eval.evaluator
    import transformers

    return {
        "filters": list(warnings.filters),
        "loggers": [logging.getLogger(n).level for n in QUIET_LOGGERS],
        "hub_bars": huggingface_hub.utils.are_progress_bars_disabled(),
        "transformers_bars": transformers.utils.logging.is_progress_bar_enabled(),
        "datasets_bars": datasets.is_progress_bar_enabled(),
        "datasets_env": os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS"),
        "git_probe": lm_eval.evaluator.get_git_commit_hash,
    }


def test_quiet_leaves_nothing_behind():
    """A quiet block changes the libraries' state while it runs, and puts all of it back after: a later
    command or test in the same process does not inherit silenced warnings, loggers or progress bars."""
    from dus.quiet import quiet_lm_eval

    before = _library_state()
    with quiet(False):
        quiet_lm_eval()
        during = _library_state()
        assert all(during[key] != before[key] for key in ("filters", "loggers", "git_probe")), during
        assert during["hub_bars"] and not during["transformers_bars"] and not during["datasets_bars"]
    assert _library_state() == before
    with pytest.raises(KeyError), quiet(False):  # a failing command too
        raise KeyError("boom")
    assert _library_state() == before


def test_sft_prints_no_progress_bars(tmp_path, run_dus, capsys):
    rows = [
        {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
        for r in facts(8)
    ]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    model = tiny_model_dir()
    capsys.readouterr()  # making the model may draw a bar of its own
    code, out, err = run_dus(
        "sft",
        model,
        "--data",
        data,
        "-o",
        tmp_path / "sft",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "128",
        "--logging-steps",
        "1",
    )
    assert code == 0, err
    assert "\r" not in err + out and "it/s" not in err, err
    assert err.splitlines() == ["data: 8 examples, dropped 0 by task filter, 0 by n-gram overlap, 8 kept"]
    assert "saved " in out and "'loss'" in out  # the Trainer's log lines still come, as plain lines


def test_pretrain_can_skip_the_final_checkpoint(tiny_model, corpus, tmp_path, run_dus):
    common = [
        tiny_model,
        "--data",
        corpus["train"],
        "--seq-len",
        "64",
        "--batch-size",
        "2",
        "--warmup-steps",
        "1",
        "--cache-dir",
        tmp_path / "cache",
        "--no-final-checkpoint",
    ]
    code, _, err = run_dus("pretrain", *common, "--output", tmp_path / "done", "--max-steps", "4", "--save-every", "3")
    assert code == 0, err
    assert (tmp_path / "done" / "model.safetensors").is_file()  # the exported model is always written
    assert sorted(p.name for p in (tmp_path / "done" / "checkpoints").glob("step_*")) == ["step_00000003"]

    code, _, err = run_dus(
        "pretrain", *common, "--output", tmp_path / "paused", "--max-steps", "4", "--stop-after", "2"
    )
    assert code == 0, err  # leaving early still leaves a checkpoint to resume from
    assert [p.name for p in (tmp_path / "paused" / "checkpoints").glob("step_*")] == ["step_00000002"]


def test_lm_eval_git_probe_is_silent_outside_a_repository(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator

    from dus.quiet import quiet_lm_eval

    monkeypatch.chdir(tmp_path)  # not a git repository: lm-eval's own probe prints `fatal: ...` to fd 2
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lm_eval.evaluator.get_git_commit_hash)
    with quiet(False):
        quiet_lm_eval()
        assert lm_eval.evaluator.get_git_commit_hash() is None
    assert capfd.readouterr().err == ""
