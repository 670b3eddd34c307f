"""One option system: dataclass fields -> flags, --config YAML keys (flags win) and the docs' option tables."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from refusal import assert_refused

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


# every command whose options are a dataclass (dus/options.py)
OPTION_COMMANDS = "plan build pretrain sft dpo chat contamination eval analyze compare upcycle scan".split()


def test_every_command_with_options_is_built_from_a_dataclass():
    assert set(COMMANDS) == set(OPTION_COMMANDS)


@pytest.mark.parametrize("command", OPTION_COMMANDS)
def test_every_field_is_a_flag(command, run_dus):
    code, out, _ = run_dus(command, "--help")
    assert code == 0 and "--config" in out
    for f in fields(COMMANDS[command]):
        if not f.metadata["positional"] and f.metadata["cli"]:
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
    config.write_text(
        "model: base\ndata: [a.jsonl, b.jsonl]\noutput: out\nmax_length: 512\nlr: 3e-5\n"
        "gradient-checkpointing: true\npacking: true\n"
    )
    opts = load(SFTOptions, config, {"lr": 1e-4, "gradient_checkpointing": False, "data": None})
    assert (opts.model, opts.data, opts.seq_len, opts.lr) == ("base", ["a.jsonl", "b.jsonl"], 512, 1e-4)
    assert opts.gradient_checkpointing is False and opts.packing is True
    assert load(DPOOptions, None, {"model": "m", "data": ["d"], "output": "o"}).lr == 5e-7  # each command its default


@pytest.mark.parametrize(
    "yaml, message",
    [
        ("sequence_length: 64\n", "unknown option 'sequence_length'"),
        ("batch-size: two\n", "bad value 'two' for 'batch_size'"),
        ("packing: yes please\n", "expected true or false"),
    ],
)
def test_bad_config_is_an_input_error(tmp_path, yaml, message):
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\ndata: d\noutput: o\n" + yaml)
    with pytest.raises(InputError, match=message):
        load(SFTOptions, config, {})


def test_cli_reads_config_and_flags_win(tmp_path, run_dus, monkeypatch):
    import dus.analyze.run

    seen = []
    paths = {"json": "a.json", "influence": "b.png", "distance": "c.png"}
    result = {"model": "m", "recommendation": {"overlap": 3, "layers": 10}}
    monkeypatch.setattr(dus.analyze.run, "run", lambda opts: seen.append(opts) or (result, paths))
    monkeypatch.setattr(dus.analyze, "summary", lambda result: "summary", raising=False)
    config = tmp_path / "analyze.yaml"
    config.write_text("model: m\ntext: t.txt\nseq-len: 32\nmax_tokens: 100\n")
    code, out, err = run_dus("analyze", "--config", config, "--seq-len", "64", "--device", "cpu")
    assert code == 0 and out.startswith("summary") and "wrote a.json" in out, err
    assert out.splitlines()[-1] == "build it: dus build m m-dus10 --overlap 3"
    [opts] = seen
    assert (opts.model, opts.text, opts.seq_len, opts.max_tokens, opts.device) == ("m", "t.txt", 64, 100, "cpu")


def test_cli_list_options_from_config_unless_given(tmp_path, run_dus, monkeypatch):
    import dus.eval.run

    seen = []
    monkeypatch.setattr(
        dus.eval.run, "check_contamination", lambda opts: seen.append(opts) or ([], SimpleNamespace(threshold=0.1))
    )
    monkeypatch.setattr("dus.eval.contamination.table", lambda results, threshold: "table")
    config = tmp_path / "c.yaml"
    config.write_text("target: t\nref: r\ndata: [a.jsonl, b.jsonl]\nexamples: 7\n")
    assert run_dus("contamination", "--config", config)[0] == 0
    assert run_dus("contamination", "--config", config, "--data", "c.jsonl", "--no-verbose")[0] == 0
    assert [(o.target, o.ref, o.data, o.examples) for o in seen] == [
        ("t", "r", ["a.jsonl", "b.jsonl"], 7),
        ("t", "r", ["c.jsonl"], 7),
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["sft", "--data", "d.jsonl", "-o", "out"],
            "missing MODEL: give it on the command line or as `model:` in --config",
        ),
        (["contamination", "t", "--data", "d.jsonl"], "missing --ref"),
        (["eval", "m", "--limit", "x"], "Invalid value for '--limit'"),
        (["dpo", "m", "--data", "d", "-o", "o", "--no-such-flag"], "No such option"),
    ],
)
def test_missing_or_bad_options_are_one_line(args, message, run_dus):
    code, _, err = run_dus(*args)
    assert_refused(code, err, message)


def test_no_private_typer_api():
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "dus").rglob("*.py"))
    assert "typer._" not in sources and "import click" not in sources


def test_the_plan_options_are_one_declaration(tmp_path):
    """Each PlanOptions field is a recipe-file key (either spelling), a flag of plan and build where a flag
    can spell it, and a keyword of dus.plan; a field added to the dataclass is all of these at once."""
    from dataclasses import make_dataclass

    from dus.cli.options import parameters
    from dus.options import from_mapping, markdown_table, option
    from dus.plan.options import RECIPE_KEYS, PlanOptions, plan_options

    assert COMMANDS["plan"] is COMMANDS["build"] is PlanOptions
    flags = {p.name for p in parameters(PlanOptions)}
    for f in fields(PlanOptions):
        assert f.name in RECIPE_KEYS and flag(f.name) in RECIPE_KEYS
        assert (f.name in flags) == f.metadata["cli"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: solar\nstack: model.layers\nallow-index-dependent: true\nshard_size: 2GB\n")
    opts = plan_options({"source": "m", "overlap": 3, "dtype": None}, recipe)
    assert (opts.recipe, opts.overlap, opts.stack, opts.allow_index_dependent, opts.dtype, opts.shard_size) == (
        "dus",
        3,
        "model.layers",
        True,
        "float16",
        "2GB",
    )
    assert list(opts.recorded()) == [
        "recipe",
        "overlap",
        "dtype",
        "config_overrides",
        "stack",
        "shard_size",
        "source",
    ]  # the order given: the file (its preset first), then the options
    recipe.write_text("preset: solar\nnew-layers: 4\n")  # expand's option under the preset's dus: never read
    with pytest.raises(InputError, match=r"r\.yaml: --new-layers is not an option of --recipe dus"):
        plan_options({"source": "m"}, recipe)
    with pytest.raises(InputError, match="unknown option 'widht'"):
        plan_options({"widht": 2})
    with pytest.raises(InputError, match="bad value 'x' for 'overlap'"):
        plan_options({"overlap": "x"})

    Grown = make_dataclass("Grown", [("width", int | None, option(None, "New hidden size."))], bases=(PlanOptions,))
    assert "width" in {p.name for p in parameters(Grown)} and "| `width` |" in markdown_table(Grown)
    assert from_mapping(Grown, {"width": "1024", "overlap": 2}).width == 1024


def test_the_python_api_takes_the_plan_options_as_keywords(llama_source):
    import dus.api  # `dus.plan`, once the dus.plan package is imported, is that package

    by_keywords = dus.api.plan(llama_source, overlap=1)
    assert by_keywords.options.overlap == 1 and len(by_keywords.plan.layers) == 6
    from dus.plan.options import PlanOptions

    assert dus.api.plan(options=PlanOptions(source=llama_source, overlap=1)).plan == by_keywords.plan
    with pytest.raises(InputError, match="unknown option 'overlapp'"):
        dus.api.plan(llama_source, overlapp=1)


def test_dus_plan_is_callable_before_and_after_the_plan_package_is_imported(llama_source):
    """The README's `dus.plan(...)`: Python rebinds `dus.plan` to the package on any import of dus.plan.*,
    so it must keep working after the CLI or the plan modules are imported, in a fresh process."""
    code = (
        "import sys, dus\n"
        "first = dus.plan(sys.argv[1], overlap=1)\n"
        "import dus.cli, dus.plan.options, dus.api\n"
        "again = dus.plan(sys.argv[1], layers='0:4,1:4')\n"
        "print(len(first.plan.layers), len(again.plan.layers), dus.plan.options.PlanOptions.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(llama_source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["6", "7", "PlanOptions"]
