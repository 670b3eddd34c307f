"""Typer commands built from option dataclasses (dus/options.py): one flag per field, plus --config.

    @options_command(app, "sft", SFTOptions)
    def sft_command(opts: SFTOptions) -> None:
        \"\"\"Help text of `dus sft`.\"\"\"

Typer reads a command's parameters from its callback's signature, and its own parameter
classes are not a stable API (their constructors changed in typer 0.29). So the callback is
a plain function whose signature is derived from the dataclass (Python's `__signature__`
protocol), holding public `typer.Option` / `typer.Argument` defaults. Every flag defaults to
None, meaning "not given": only given flags override the --config file.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import typer

from dus.options import base_type, default_of, flag, hints, load

_CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=Path | None,
    default=typer.Option(
        None,
        "--config",
        show_default=False,
        help="YAML file of the same options (dashes or underscores); flags given here override it.",
    ),
)


COMMANDS: dict[str, type] = {}  # command name -> its options dataclass, for docs and pipelines


def options_command(app: typer.Typer, name: str, options: type, loader=None, config_help: str | None = None):
    """Register `dus NAME` on `app`; the decorated function gets the filled `options` instance.

    Parameters of the decorated function after the first are the command's own flags (typer
    defaults), passed to it as given: what the command does with its options, not options.
    `loader(config, values, own)` fills the instance where the command's --config is more than its
    options (a recipe file); it may change the command's own flags `own` (a dict). By default
    `dus.options.load`.
    """

    def register(run):
        COMMANDS[name] = options
        own = list(inspect.signature(run, eval_str=True).parameters.values())[1:]
        params = sorted(parameters(options) + own, key=lambda p: p.kind)  # the arguments first
        positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        config = _CONFIG
        if config_help:
            config = _CONFIG.replace(
                default=typer.Option(
                    None, "--config", show_default=False, help=config_help, rich_help_panel=_panel(options)
                )
            )
        params.insert(positional, config)
        load_options = loader or (lambda config, values, own: load(options, config, values))

        def command(**values) -> None:
            flags = {p.name: values.pop(p.name) for p in own}
            opts = load_options(values.pop("config"), values, flags)
            run(opts, **flags)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = run.__doc__
        app.command(name)(command)
        return run

    return register


def parameters(options: type) -> list[inspect.Parameter]:
    types = hints(options)
    return [_parameter(f, types[f.name]) for f in fields(options) if f.metadata.get("cli", True)]


def _panel(options: type) -> str | None:
    return next((f.metadata["panel"] for f in fields(options) if f.metadata.get("panel")), None)


def _parameter(f, hint) -> inspect.Parameter:
    meta, default = f.metadata, default_of(f)
    kind = base_type(hint)[0]
    annotation = (str if kind is object else kind) | None  # object: any YAML value; on the command line a string
    if meta["positional"]:
        info = typer.Argument(None, metavar=meta["metavar"] or f.name.upper(), help=meta["help"], show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=info)
    names = [f"--{flag(n)}" for n in (f.name, *meta["aliases"])]
    if base_type(hint)[0] is bool:
        names = [f"--{flag(f.name)}/--no-{flag(f.name)}"]
    if meta["short"]:
        names.insert(0, meta["short"])
    shown = f"  [default: {default}]" if default is not False and default not in (None, "", []) else ""
    info = typer.Option(
        None,
        *names,
        help=meta["help"] + shown,
        show_default=False,
        metavar=meta["metavar"],
        rich_help_panel=meta["panel"],
    )
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)
