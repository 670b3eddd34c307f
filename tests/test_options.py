"""One option system: dataclass fields -> flags, --config YAML keys (flags win) and the docs' option tables."""

from __future__ import annotations

import importlib.util
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

import dus.cli  # noqa: F401 (registers every command)
from dus.cli.options import COMMANDS
from dus.errors import InputError
from dus.instruct.options import DPOOptions, SFTOptions
from dus.options import flag, load

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("option_tables", ROOT / "scripts" / "option_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_with_options_is_built_from_a_dataclass():
    assert set(COMMANDS) == {"pretrain", "sft", "dpo", "chat", "contamination", "eval", "analyze", "scan"}


@pytest.mark.parametrize("command", ["pretrain", "sft", "dpo", "chat", "contamination", "eval", "analyze", "scan"])
def test_every_field_is_a_flag(command, run_dus):
    code, out, _ = run_dus(command, "--help")
    assert code == 0 and "--config" in out
    for f in fields(COMMANDS[command]):
        if not f.metadata["positional"]:
            assert f"--{flag(f.name)}" in out, f.name
            assert f.metadata["help"][:30] in " ".join(out.split())  # the field's help is the flag's help


def test_docs_tables_match_the_dataclasses(tmp_path):
    script = _script()
    assert script.stale() == [], "run python scripts/option_tables.py"
    page = (ROOT / "docs" / "pretrain.md").read_text(encoding="utf-8")
    table = page.split("<!-- options: pretrain -->\n")[1].split("<!-- /options -->")[0]
    keys = [row.split("|")[1].strip().strip("`") for row in table.splitlines()[2:]]
    assert keys == [flag(f.name) for f in fields(COMMANDS["pretrain"])]
    # a hand edit of a default is caught
    edited = page.replace("| `seq-len` | 2048 |", "| `seq-len` | 4096 |")
    assert edited != page and script.updated(edited) == page


def test_analyze_synopsis_defaults_match():
    """docs/analyze.md opens with the command line and its defaults, written by hand: [--seq-len 256]."""
    import re

    synopsis = (ROOT / "docs" / "analyze.md").read_text(encoding="utf-8").split("```")[1]
    shown = dict(re.findall(r"\[--([a-z-]+) ([^\]\s|]+)\]", synopsis))
    defaults = {flag(f.name): str(f.default) for f in fields(COMMANDS["analyze"])}
    assert len(shown) == 7 and {k: defaults[k] for k in shown} == shown


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("pretrain-*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load(COMMANDS["pretrain"], path, {"model": "m", "data": ["d"], "output": "o"})
    assert config.model == "m" and config.seq_len > 0


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("model: base\ndata: [a.jsonl, b.jsonl]\noutput: out\nmax_length: 512\nlr: 3e-5\n"
                      "gradient-checkpointing: true\npacking: true\n")
    opts = load(SFTOptions, config, {"lr": 1e-4, "gradient_checkpointing": False, "data": None})
    assert (opts.model, opts.data, opts.seq_len, opts.lr) == ("base", ["a.jsonl", "b.jsonl"], 512, 1e-4)
    assert opts.gradient_checkpointing is False and opts.packing is True
    assert load(DPOOptions, None, {"model": "m", "data": ["d"], "output": "o"}).lr == 5e-7  # each command its default


@pytest.mark.parametrize("yaml, message", [
    ("sequence_length: 64\n", "unknown option 'sequence_length'"),
    ("batch-size: two\n", "bad value 'two' for 'batch_size'"),
    ("packing: yes please\n", "expected true or false"),
])
def test_bad_config_is_an_input_error(tmp_path, yaml, message):
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\ndata: d\noutput: o\n" + yaml)
    with pytest.raises(InputError, match=message):
        load(SFTOptions, config, {})


def test_cli_reads_config_and_flags_win(tmp_path, run_dus, monkeypatch):
    import dus.analyze.options

    seen = []
    paths = {"json": "a.json", "influence": "b.png", "distance": "c.png"}
    monkeypatch.setattr(dus.analyze.options, "run", lambda opts: seen.append(opts) or ({}, paths))
    monkeypatch.setattr(dus.analyze, "summary", lambda result: "summary", raising=False)
    config = tmp_path / "analyze.yaml"
    config.write_text("model: m\ntext: t.txt\nseq-len: 32\nmax_tokens: 100\n")
    code, out, err = run_dus("analyze", "--config", config, "--seq-len", "64", "--device", "cpu")
    assert code == 0 and out.startswith("summary") and "wrote a.json" in out, err
    [opts] = seen
    assert (opts.model, opts.text, opts.seq_len, opts.max_tokens, opts.device) == ("m", "t.txt", 64, 100, "cpu")


def test_cli_list_options_from_config_unless_given(tmp_path, run_dus, monkeypatch):
    import dus.eval.run

    seen = []
    monkeypatch.setattr(dus.eval.run, "check_contamination", lambda opts: seen.append(opts) or ([], SimpleNamespace(threshold=0.1)))
    monkeypatch.setattr("dus.eval.contamination.table", lambda results, threshold: "table")
    config = tmp_path / "c.yaml"
    config.write_text("target: t\nref: r\ndata: [a.jsonl, b.jsonl]\nexamples: 7\n")
    assert run_dus("contamination", "--config", config)[0] == 0
    assert run_dus("contamination", "--config", config, "--data", "c.jsonl", "--no-verbose")[0] == 0
    assert [(o.target, o.ref, o.data, o.examples) for o in seen] == [("t", "r", ["a.jsonl", "b.jsonl"], 7),
                                                                      ("t", "r", ["c.jsonl"], 7)]


@pytest.mark.parametrize("args, message", [
    (["sft", "--data", "d.jsonl", "-o", "out"], "missing MODEL: give it on the command line or as `model:` in --config"),
    (["contamination", "t", "--data", "d.jsonl"], "missing --ref"),
    (["eval", "m", "--limit", "x"], "Invalid value for '--limit'"),
    (["dpo", "m", "--data", "d", "-o", "o", "--no-such-flag"], "No such option"),
])
def test_missing_or_bad_options_are_one_line(args, message, run_dus):
    code, _, err = run_dus(*args)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and message in err, err


def test_no_private_typer_api():
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "dus").rglob("*.py"))
    assert "typer._" not in sources and "import click" not in sources
