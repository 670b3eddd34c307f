"""Everything a recipe names that exists before the run is checked before its first stage starts:
every stage's options (known to the command, of the command's type) and every data file it reads.

A path is read as the stage command reads it: relative to the current directory. A path the
pipeline itself makes (WORKDIR/data/ for `prepare:`, an earlier stage's WORKDIR/STAGE/) need not
exist yet. Without this, a missing pretrain data file was found after a 21 GB build.
"""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError
from dus.pipeline.recipe import Recipe, Stage, command_argv


def recipe_problems(recipe: Recipe, workdir: Path, flags) -> list[str]:
    """One line per problem, in stage order; [] when every stage may start."""
    problems, made = [], [workdir / "data"] if recipe.prepare else []
    for stage in recipe.stages:
        try:
            _check_options(stage, flags)
        except InputError as e:
            problems.append(str(e))
        for path in stage.data_paths():
            if not Path(path).expanduser().exists() and not _made_by_pipeline(Path(path), made):
                problems.append(
                    f"{stage.name}: data path not found: {path} (relative paths are relative to the "
                    f"current directory, {Path.cwd()})"
                )
        made.append(workdir / stage.name)
    return problems


def check_commands(recipe: Recipe, flags) -> None:
    """Every stage's keys make a command line (known options, none the pipeline sets): a dry run that
    cannot print a stage's command stops with the reason instead of warning about it."""
    for stage in recipe.stages:
        command_argv(Stage(stage.name, _options(stage), stage.nproc), [], None, flags)


def check_recipe(recipe: Recipe, workdir: Path, flags) -> None:
    problems = recipe_problems(recipe, workdir, flags)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise InputError(f"{recipe.path}: {problems[0]}{more}; nothing was run")


def _check_options(stage: Stage, flags) -> None:
    """The stage's keys are the command's options and each value converts to the option's type."""
    options = _options(stage)
    command_argv(Stage(stage.name, options, stage.nproc), [], None, flags)
    params = flags(stage.name)
    for key, value in options.items():
        param = params[key]
        if param.is_flag or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            try:
                param.type(str(item), param, None)
            except Exception as e:  # click's BadParameter; typer keeps its click private
                message = str(getattr(e, "message", e)).rstrip(".")
                raise InputError(f"{stage.name}: bad value for `{key}`: {message}") from None


def _options(stage: Stage) -> dict:
    return {k: v for k, v in stage.options.items() if k != "model"}  # `model:` is the first stage's argument


def _made_by_pipeline(path: Path, made: list[Path]) -> bool:
    resolved = path.expanduser().resolve()
    return any(resolved == m or m in resolved.parents for m in made)
