"""`dus pipeline`: a whole recipe (build -> pretrain -> sft -> dpo -> contamination -> eval)."""

from __future__ import annotations

from pathlib import Path

import typer

from dus.cli import app


@app.command("pipeline")
def pipeline_command(
    recipe: Path = typer.Argument(..., help="A recipe YAML (configs/solar-10.7b.yaml, configs/smollm2-tiny.yaml)."),
    workdir: Path = typer.Option(..., "--workdir", help="Each stage writes WORKDIR/<stage>/."),
    only: str | None = typer.Option(None, "--only", help="Run this stage only."),
    start: str | None = typer.Option(None, "--from", help="Run this stage and the ones after it."),
    force: bool = typer.Option(False, "--force", help="Re-run the --only/--from stage even if it is up to date."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands that would run (usable by hand)."),
):
    """Run a recipe's stages in order, each as its own process, skipping stages that are up to date.

    A stage is up to date when its output records the same command options, the same parent
    and the same data fingerprints; changing a stage's options re-runs it and all after it.
    An interrupted pretrain continues from its last checkpoint.
    """
    from dus.pipeline import run_pipeline
    from dus.pipeline.summary import summary_table

    steps = run_pipeline(
        str(recipe), str(workdir), only=only, start=start, force=force, dry_run=dry_run, flags=command_flags
    )
    if not dry_run:
        print(summary_table(steps))


def command_flags(stage: str) -> dict:
    """{option name without dashes: its click parameter}, read from the command itself so the
    recipe's keys are exactly the command's options (the CLI is the one place they are declared)."""
    command = typer.main.get_command(app).commands[stage]
    params = {}
    for p in command.params:
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                params[opt[2:]] = p
    return params
