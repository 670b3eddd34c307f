"""`dus pretrain` and `dus report`.

The pretrain options are generated from `PretrainConfig`'s fields, so every
YAML key has a flag of the same name and help. Flags default to None, which
means "not given": only given flags override the --config file.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import fields
from pathlib import Path

import typer

from dus.cli import app
from dus.train.config import PretrainConfig, default_of

_HINTS = typing.get_type_hints(PretrainConfig)


def _parameter(f) -> inspect.Parameter:
    hint, default, help = _HINTS[f.name], default_of(f), f.metadata["help"]
    if f.metadata.get("positional"):
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str | None,
                                 default=typer.Argument(None, metavar="MODEL_DIR", help=help, show_default=False))
    flag = "--" + f.name.replace("_", "-")
    names = [f"{flag}/--no-{flag[2:]}"] if hint is bool else [flag]
    shown = f" [default: {default}]" if default is not False and default not in ("", [], None) else ""
    metavar = {int: "INT", float: "FLOAT", str: "TEXT", list[str]: "PATH"}.get(hint)
    option = typer.Option(None, *names, help=help + shown, show_default=False, metavar=metavar)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hint | None, default=option)


def _pretrain(config: Path | None = None, **flags) -> None:
    from dus.train import load_config, pretrain

    pretrain(load_config(config, flags))


_CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                            default=typer.Option(None, "--config", help="YAML file of the same keys; flags override it",
                                                 show_default=False))
_params = [_parameter(f) for f in fields(PretrainConfig)]
_pretrain.__signature__ = inspect.Signature([_params[0], _CONFIG, *_params[1:]])
_pretrain.__annotations__ = {p.name: p.annotation for p in _pretrain.__signature__.parameters.values()}
_pretrain.__doc__ = """Continued pretraining of a (depth up-scaled) model on plain text.

One process: `dus pretrain MODEL_DIR --data corpus/ --output runs/cpt`.
Many GPUs: `torchrun --nproc-per-node 8 -m dus pretrain ...` (FSDP2).
The trained model is saved as a Hugging Face directory in OUTPUT."""
app.command("pretrain")(_pretrain)


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="a `dus pretrain` output directory"),
           output: Path | None = typer.Option(None, "--output", "-o", help="PNG path [default: RUN_DIR/loss.png]")) -> None:
    """Plot a run's train and eval loss from its metrics.jsonl as a PNG."""
    from dus.train.report import plot_loss

    print(f"wrote {plot_loss(run_dir, output)}")
