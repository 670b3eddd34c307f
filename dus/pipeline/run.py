"""Run a recipe's stages in order, each as its own process, like `make`.

Stage S writes WORKDIR/S/ and its output is the next stage's input. A stage is
current, and skipped, when its output's record (the model manifest, dus_plan.json,
or for contamination and eval a small dus_stage.json) holds the same `dus` command
line, the same parent manifest digest and the same data fingerprints as this run
would; a changed option changes the command, so the stage re-runs and, its
manifest changing, so does everything after it. Before a stage runs, what it is
meant to produce is written to WORKDIR/.S.pending.json: a pretrain interrupted
with that same record still pending continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dus.errors import BuildError, InputError
from dus.manifest import fingerprint, manifest_digest, read_manifest, stage_record
from dus.pipeline.check import check_commands, check_recipe, recipe_problems
from dus.pipeline.recipe import MODEL_STAGES, Recipe, Stage, command_argv, launcher, load_recipe, shell_line

STAGE_RECORD = "dus_stage.json"  # contamination and eval: not model directories, the same three facts
BUILD_RECIPE = "build.yaml"  # the recipe's build keys with placeholders filled in, for `dus build --config`
UNCHECKED = ("--resume", "--force")  # how a stage is started, not what it makes


@dataclass
class Step:
    stage: Stage
    argv: list[str]  # `dus ...` without the launcher
    output: Path
    parent: str | None
    expected: dict
    status: str = "pending"  # ran | skipped | would run
    seconds: float = 0.0


def run_pipeline(
    recipe_path: str,
    workdir: str,
    only: str | None = None,
    start: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    say=print,
    *,
    flags,
) -> list[Step]:
    """`flags(stage)`: the stage command's options (dus.cli.pipeline.command_flags)."""
    workdir_path = Path(workdir).expanduser().resolve()
    recipe = load_recipe(recipe_path, workdir_path)
    names = [s.name for s in recipe.stages]
    for flag, name in (("--only", only), ("--from", start)):
        if name is not None and name not in names:
            raise InputError(f"{flag} {name}: the recipe has no such stage (it has: {', '.join(names)})")
    if dry_run:
        check_commands(recipe, flags)
        for problem in recipe_problems(recipe, workdir_path, flags):
            print(f"warning: {problem} (a real run stops here)", file=sys.stderr)
    else:
        check_recipe(recipe, workdir_path, flags)
        workdir_path.mkdir(parents=True, exist_ok=True)  # a fresh --workdir is made, not a crash
    if recipe.prepare:
        from dus.pipeline.tinydata import prepare, prepare_argv

        if dry_run:
            say(shell_line(prepare_argv(recipe.prepare, workdir_path / "data")))
        else:
            prepare(recipe.prepare, workdir_path / "data")
    steps, parent = [], None
    for stage in recipe.stages:
        step = _step(recipe, stage, workdir_path, parent, flags)
        if stage.name in MODEL_STAGES:
            parent = str(step.output)
        selected = (only is None or stage.name == only) and (
            start is None or names.index(stage.name) >= names.index(start)
        )
        if not selected:
            step.status = "not selected"
        elif not (force and stage.name in (only, start)) and _current(step):
            step.status = "skipped"
            say(f"[{stage.name}] up to date: {step.output}")
        elif dry_run:
            step.status = "would run"
            say(shell_line([*launcher(stage, by_hand=True), *step.argv]))
        else:
            _run(step, workdir_path)
        steps.append(step)
    return steps


def _step(recipe: Recipe, stage: Stage, workdir: Path, parent: str | None, flags) -> Step:
    out = workdir / stage.name
    if stage.name == "build":
        config = recipe.path if recipe.build_config else workdir / BUILD_RECIPE
        if not recipe.build_config:  # placeholders filled in: the build reads a copy (a dry run's too)
            workdir.mkdir(parents=True, exist_ok=True)
            _write_yaml(config, recipe.build_keys)
        argv = command_argv(stage, [str(out), "--config", str(config)], None, flags)
        parent = str(recipe.build_keys.get("source") or "")
    else:
        given = stage.options.pop("model", None)
        if (parent is None) == (given is None):
            raise InputError(
                f"{recipe.path}: {stage.name}: `model:` is for the first stage only (later stages read "
                f"the previous stage's output)"
                if given
                else f"{recipe.path}: {stage.name} is the first stage: give `model:` in its section"
            )
        parent = parent or str(given)
        target = str(out / "contamination.json") if stage.name == "contamination" else str(out)
        argv = command_argv(stage, [parent], target, flags)
    expected = {"command": _canonical(argv), "parent": _digest(parent), "data": fingerprint(stage.data_paths())}
    if stage.name == "build":
        expected["options"] = _build_options(recipe.build_keys)
    return Step(stage, argv, out, parent, expected)


def _build_options(keys: dict) -> dict:
    """The options `dus build --config` resolves from the build keys (a preset expanded), as recorded."""
    from dus.plan.options import preset

    keys = dict(keys)
    if "preset" in keys:
        keys = {**preset(keys.pop("preset")), **keys}
    return json.loads(json.dumps(keys))


def _digest(ref: str | None) -> dict | None:
    return manifest_digest(ref) if ref and Path(ref).is_dir() else None


def _canonical(argv: list[str]) -> list[str]:
    return [a for a in argv if a not in UNCHECKED]


def recorded(step: Step) -> dict | None:
    """The three facts the stage's output records, or None where it has no finished record."""
    try:
        if step.stage.name in MODEL_STAGES:
            record = read_manifest(step.output)
        else:
            record = json.loads((step.output / STAGE_RECORD).read_text())
    except (InputError, OSError, json.JSONDecodeError):
        return None
    facts = {
        "command": _canonical(record.get("command", [])),
        "parent": (record.get("parent") or {}).get("manifest"),
        "data": record.get("data", {}),
    }
    if step.stage.name == "build":
        facts["options"] = record.get("options")
    return facts


def _current(step: Step) -> bool:
    return recorded(step) == step.expected


def _run(step: Step, workdir: Path) -> None:
    pending = workdir / f".{step.stage.name}.pending.json"
    argv = list(step.argv)
    if step.stage.name == "pretrain" and _resumable(step, pending):
        argv.append("--resume")
    elif step.output.exists():
        shutil.rmtree(step.output)  # stale: made from other options, another parent or other data
    pending.write_text(json.dumps(step.expected, indent=2) + "\n")
    command = [*launcher(step.stage), *argv]
    print(f"[{step.stage.name}] {shell_line([*launcher(step.stage, by_hand=True), *argv])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command)
    step.seconds = time.perf_counter() - started
    if done.returncode:
        raise BuildError(
            f"stage {step.stage.name} failed (exit {done.returncode}); rerun the pipeline to continue from it"
        )
    if step.stage.name not in MODEL_STAGES:
        record = stage_record(
            step.stage.name,
            {"ref": step.parent, "manifest": step.expected["parent"]},
            command_line=argv,
            data=step.expected["data"],
        )
        (step.output / STAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    pending.unlink()
    step.status = "ran"
    print(f"[{step.stage.name}] done in {step.seconds:.0f} s: {step.output}", flush=True)


def _resumable(step: Step, pending: Path) -> bool:
    """An interrupted pretrain of this same stage: its pending record matches and a checkpoint is there."""
    try:
        same = json.loads(pending.read_text()) == step.expected
    except (OSError, json.JSONDecodeError):
        return False
    checkpoints = step.output / "checkpoints"
    return same and checkpoints.is_dir() and any((c / ".metadata").is_file() for c in checkpoints.iterdir())


def _write_yaml(path: Path, data: dict) -> None:
    import yaml

    text = yaml.safe_dump(data, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
