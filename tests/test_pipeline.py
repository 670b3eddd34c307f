"""`dus pipeline`: a tiny recipe runs end to end, then skips every stage, then re-runs from a changed
SFT option; the SOLAR recipe's dry run prints the 8-GPU command sequence."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from instruct_fixtures import tiny_model_dir
from refusal import assert_refused

from dus.cli.pipeline import command_flags
from dus.manifest import manifest_digest, read_manifest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {
    "batch-size": 2,
    "max-steps": 2,
    "seq-len": 64,
    "lr": 1e-3,
    "logging-steps": 1,
    "dtype": "float32",
    "gradient-checkpointing": False,
}


def tiny_recipe(path: Path, sft_lr: float = 1e-3) -> Path:
    """The shape of configs/smollm2-tiny.yaml on a 2-layer random model."""
    recipe = {
        "source": tiny_model_dir(),
        "recipe": "stack",
        "prepare": "pydoc-topics",
        "pretrain": {
            "data": ["{workdir}/data/pretrain/train.jsonl"],
            "eval-data": ["{workdir}/data/pretrain/eval.jsonl"],
            "seq-len": 64,
            "batch-size": 2,
            "max-steps": 2,
            "save-every": 1,
            "eval-every": 1,
            "eval-batches": 2,
            "warmup-steps": 1,
            "log-every": 1,
            "cache-dir": "{workdir}/cache",
        },
        "sft": {"data": ["{workdir}/data/sft.jsonl"], **TRAIN, "lr": sft_lr},
        "dpo": {"data": ["{workdir}/data/dpo.jsonl"], **TRAIN},
        "contamination": {
            "ref": "{workdir}/build",
            "data": ["{workdir}/data/bench/seen.jsonl", "{workdir}/data/bench/unseen.jsonl"],
            "examples": 2,
            "neighbours": 2,
            "batch-size": 4,
            "max-length": 32,
            "device": "cpu",
        },
        "eval": {
            "tasks": "arc_challenge,gsm8k",
            "include-path": "{workdir}/data/tasks",
            "batch-size": "1",
            "device": "cpu",
            "limit": 2,
        },
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def statuses(out: str) -> dict[str, str]:
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[1].strip(): r[4].strip() for r in rows[1:]}


@pytest.mark.slow
def test_run_skip_and_rerun_from_a_changed_option(tmp_path, run_dus):
    work = tmp_path / "work"
    code, out, err = run_dus("pipeline", tiny_recipe(tmp_path / "r.yaml"), "--workdir", work)
    assert code == 0, err
    ran = statuses(out)
    assert list(ran) == ["build", "pretrain", "sft", "dpo", "contamination", "eval"]
    assert all(t.endswith(" s") for t in ran.values()), ran
    assert (
        "4 layers" in out and "eval loss" in out and "seen" in out and "arc_challenge" in out and "(* --limit 2" in out
    )
    for stage in ("pretrain", "sft", "dpo"):
        assert read_manifest(work / stage)["parent"]["ref"] == str(
            work / {"pretrain": "build", "sft": "pretrain", "dpo": "sft"}[stage]
        )
    code, out, err = run_dus("verify", work / "dpo")
    assert code == 0 and "<- build" in out, err

    code, out, err = run_dus("pipeline", tiny_recipe(tmp_path / "r.yaml"), "--workdir", work)
    assert code == 0, err
    assert set(statuses(out).values()) == {"skipped"}

    code, out, err = run_dus("pipeline", tiny_recipe(tmp_path / "r.yaml", sft_lr=2e-3), "--workdir", work)
    assert code == 0, err
    again = statuses(out)
    assert [s for s, t in again.items() if t == "skipped"] == ["build", "pretrain"]
    assert read_manifest(work / "sft")["options"]["lr"] == 2e-3
    record = json.loads((work / "eval" / "dus_stage.json").read_text())
    assert record["parent"] == {"ref": str(work / "dpo"), "manifest": manifest_digest(work / "dpo")}


def test_an_interrupted_pretrain_resumes(tmp_path, run_dus, monkeypatch):
    """A pending pretrain record that matches, and a checkpoint: the pipeline adds --resume."""
    from dus.pipeline import run as pipeline_run

    seen = []
    monkeypatch.setattr(pipeline_run.subprocess, "run", lambda argv: seen.append(argv) or _Done())
    recipe = tiny_recipe(tmp_path / "r.yaml")
    steps = pipeline_run.run_pipeline(
        str(recipe), str(tmp_path / "w"), only="pretrain", say=lambda s: None, flags=command_flags
    )
    assert "--resume" not in seen[-1] and steps[1].status == "ran"
    (tmp_path / "w" / ".pretrain.pending.json").write_text(json.dumps(steps[1].expected))
    (tmp_path / "w" / "pretrain" / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "w" / "pretrain" / "checkpoints" / "step_00000001" / ".metadata").write_text("")
    pipeline_run.run_pipeline(
        str(recipe), str(tmp_path / "w"), only="pretrain", say=lambda s: None, flags=command_flags
    )
    assert seen[-1][-1] == "--resume"


class _Done:
    returncode = 0


def test_solar_dry_run_prints_the_8_gpu_sequence(tmp_path, run_dus):
    code, out, err = run_dus(
        "pipeline", ROOT / "configs" / "solar-10.7b.yaml", "--workdir", tmp_path / "solar", "--dry-run"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [shlex.split(line)[0] for line in lines] == [
        "dus",
        "torchrun",
        "accelerate",
        "accelerate",
        "dus",
        "accelerate",
    ]
    build, pretrain, sft, dpo, contamination, evaluate = (shlex.split(line) for line in lines)
    assert build == [
        "dus",
        "build",
        str(tmp_path / "solar" / "build"),
        "--config",
        str(ROOT / "configs" / "solar-10.7b.yaml"),
    ]
    assert pretrain[:7] == [
        "torchrun",
        "--nproc-per-node",
        "8",
        "-m",
        "dus",
        "pretrain",
        str(tmp_path / "solar" / "build"),
    ]
    assert sft[:8] == [
        "accelerate",
        "launch",
        "--num_processes",
        "8",
        "-m",
        "dus",
        "sft",
        str(tmp_path / "solar" / "pretrain"),
    ]
    assert dpo[7] == str(tmp_path / "solar" / "sft") and contamination[2] == str(tmp_path / "solar" / "dpo")
    assert evaluate[6:9] == ["eval", str(tmp_path / "solar" / "dpo"), "--output"] and "h6" in evaluate
    assert not (tmp_path / "solar").exists()  # a dry run writes nothing


# Mistral-7B-v0.1's published config.json (the Hub is not reached in tests).
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def test_the_solar_recipe_still_builds_and_plans(tmp_path, run_dus):
    """The recipe's build section, planned on Mistral-7B's config, is SOLAR-10.7B as published:
    48 layers (0-23 then 8-31), 10,731,524,096 parameters, a float16 Llama without sliding window."""
    from dus.plan.options import load_recipe_file

    recipe = ROOT / "configs" / "solar-10.7b.yaml"
    keys = load_recipe_file(recipe)
    assert keys["source"] == "mistralai/Mistral-7B-v0.1" and "sft" not in keys  # the later stages are not build keys
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MISTRAL_7B))
    code, out, err = run_dus("plan", config, "--config", recipe, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["source_num_parameters"] == 7_241_732_096 and plan["num_parameters"] == 10_731_524_096
    assert [layer["source_layer"] for layer in plan["layers"]] == [*range(24), *range(8, 32)]
    assert plan["dtype"] == "float16"
    assert {
        k: plan["config"].get(k)
        for k in ("architectures", "model_type", "num_hidden_layers", "max_position_embeddings", "sliding_window")
    } == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 48,
        "max_position_embeddings": 4096,
        "sliding_window": None,
    }
    assert "sliding_window" not in plan["config"]


def test_bad_recipes_are_one_line(tmp_path, run_dus, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": "x", "sft": {"learning-rate": 1}}))
    code, _, err = run_dus("pipeline", bad, "--workdir", tmp_path / "w", "--dry-run")
    assert_refused(code, err, "unknown option 'learning-rate' for `dus sft`", outputs=tmp_path / "w")
    bad.write_text(yaml.safe_dump({"source": "x", "sft": {"output": "elsewhere"}}))
    code, _, err = run_dus("pipeline", bad, "--workdir", tmp_path / "w", "--dry-run")
    assert_refused(code, err, "set by the pipeline", outputs=tmp_path / "w")
    recipe = tiny_recipe(tmp_path / "r.yaml")
    capsys.readouterr()  # the progress bar of making its model
    code, _, err = run_dus("pipeline", recipe, "--workdir", tmp_path / "w", "--only", "chat")
    assert_refused(code, err, "no such stage", outputs=tmp_path / "w")


def test_a_recipe_may_start_later_from_a_given_model(tmp_path, run_dus):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"sft": {"model": "some/model", "data": ["a.jsonl"], "nproc-per-node": 2}, "eval": {"tasks": "h6"}}
        )
    )
    code, out, err = run_dus("pipeline", recipe, "--workdir", tmp_path / "w", "--dry-run")
    assert code == 0, err
    sft, evaluate = (shlex.split(line) for line in out.strip().splitlines())
    assert sft == [
        "accelerate",
        "launch",
        "--num_processes",
        "2",
        "-m",
        "dus",
        "sft",
        "some/model",
        "--output",
        str(tmp_path / "w" / "sft"),
        "--data",
        "a.jsonl",
    ]
    assert evaluate[:3] == ["dus", "eval", str(tmp_path / "w" / "sft")]
    recipe.write_text(yaml.safe_dump({"source": "x", "sft": {"model": "some/model"}}))
    code, _, err = run_dus("pipeline", recipe, "--workdir", tmp_path / "w", "--dry-run")
    assert code == 2 and "`model:` is for the first stage only" in err


RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("pretrain-"))


def _fake_stage(argv):
    """A stage process that succeeds and leaves its output directory, as the real one would."""
    args = list(argv)
    out = args[args.index("--output") + 1] if "--output" in args else args[args.index("build") + 1]
    out = Path(out)
    (out.parent if out.suffix == ".json" else out).mkdir(parents=True, exist_ok=True)
    return _Done()


def _fill_in_data(recipe: Path) -> None:
    """The FILL IN data paths a user gives, as empty files and directories (relative: to the cwd)."""
    from dus.pipeline.recipe import Stage, load_recipe

    for stage in load_recipe(recipe, Path("w").resolve()).stages:
        for path in Stage.data_paths(stage):
            if "{workdir}" not in path and not Path(path).is_absolute():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                (Path(path).mkdir if not Path(path).suffix else Path(path).touch)()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_runs_into_a_fresh_workdir(recipe, tmp_path, monkeypatch):
    """`--workdir DIR` with DIR absent (and its parent too) is created, for every recipe in configs/."""
    from dus.pipeline import run as pipeline_run
    from dus.testing import fetch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fetch, "fetch_smollm2", lambda: Path(tiny_model_dir()))
    monkeypatch.setattr(pipeline_run.subprocess, "run", _fake_stage)
    _fill_in_data(recipe)
    work = tmp_path / "runs" / "fresh"
    steps = pipeline_run.run_pipeline(str(recipe), str(work), say=lambda s: None, flags=command_flags)
    assert steps and all(s.status == "ran" for s in steps)
    assert (work / steps[0].stage.name).is_dir() and not list(work.glob(".*.pending.json"))


def test_missing_data_and_bad_values_stop_the_run_before_the_build(tmp_path, run_dus, monkeypatch):
    """The SOLAR recipe's FILL IN data paths do not exist: refused before the 21 GB build starts."""
    from dus.pipeline import run as pipeline_run

    ran = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline_run.subprocess, "run", lambda argv: ran.append(argv) or _Done())
    code, _, err = run_dus("pipeline", ROOT / "configs" / "solar-10.7b.yaml", "--workdir", tmp_path / "w")
    assert code == 2 and not ran and not (tmp_path / "w").exists(), err
    assert (
        "pretrain: data path not found: data/pretrain/train (relative paths are relative to the current "
        f"directory, {tmp_path})"
        in err
        and "nothing was run" in err
        and "more:" in err
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": "x", "pretrain": {"data": [str(bad)], "lr": "fast"}}))
    code, _, err = run_dus("pipeline", bad, "--workdir", tmp_path / "w")
    assert code == 2 and not ran and "pretrain: bad value for `lr`: 'fast' is not a valid float" in err, err
    bad.write_text(yaml.safe_dump({"source": "x", "pretrain": {"data": [str(bad)], "nproc-per-node": "eight"}}))
    code, _, err = run_dus("pipeline", bad, "--workdir", tmp_path / "w")
    assert code == 2 and "`nproc-per-node` must be a whole number >= 1, not 'eight'" in err, err


def test_dry_run_prints_the_prepare_step_and_warns_of_missing_data(tmp_path, run_dus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_dus("pipeline", tiny_recipe(tmp_path / "r.yaml"), "--workdir", tmp_path / "w", "--dry-run")
    assert code == 0, err
    first = shlex.split(out.splitlines()[0])
    assert first == ["python", "-m", "dus.pipeline.tinydata", "pydoc-topics", str(tmp_path / "w" / "data")]
    assert "warning" not in err  # WORKDIR/data/ is the prepare step's to make
    code, out, err = run_dus(
        "pipeline", ROOT / "configs" / "solar-10.7b.yaml", "--workdir", tmp_path / "s", "--dry-run"
    )
    assert code == 0 and "warning: pretrain: data path not found: data/pretrain/train" in err
    assert "(a real run stops here)" in err


def test_the_prepare_command_a_dry_run_prints_works(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dus.pipeline.tinydata", "pydoc-topics", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "sft.jsonl").is_file() and (tmp_path / "d" / "tasks" / "gsm8k.yaml").is_file()
