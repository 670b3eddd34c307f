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
import typing
from dataclasses import fields
from pathlib import Path

import typer

from dus.options import base_type, default_of, flag, hints, load

_CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                            default=typer.Option(None, "--config", show_default=False,
                                                 help="YAML file of the same options (dashes or underscores); "
                                                      "flags given here override it."))


COMMANDS: dict[str, type] = {}  # command name -> its options dataclass, for docs and pipelines


def options_command(app: typer.Typer, name: str, options: type):
    """Register `dus NAME` on `app`; the decorated function gets the filled `options` instance."""
    def register(run):
        COMMANDS[name] = options
        params = sorted(parameters(options), key=lambda p: p.kind)  # the argument first
        positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        params.insert(positional, _CONFIG)

        def command(**values) -> None:
            run(load(options, values.pop("config"), values))

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = run.__doc__
        app.command(name)(command)
        return run
    return register


def parameters(options: type) -> list[inspect.Parameter]:
    types = hints(options)
    return [_parameter(f, types[f.name]) for f in fields(options)]


def _parameter(f, hint) -> inspect.Parameter:
    meta, default = f.metadata, default_of(f)
    annotation = base_type(hint)[0] | None
    if meta["positional"]:
        info = typer.Argument(None, metavar=meta["metavar"] or f.name.upper(), help=meta["help"], show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=info)
    names = [f"--{flag(n)}" for n in (f.name, *meta["aliases"])]
    if base_type(hint)[0] is bool:
        names = [f"--{flag(f.name)}/--no-{flag(f.name)}"]
    if meta["short"]:
        names.insert(0, meta["short"])
    shown = f"  [default: {default}]" if default is not False and default not in (None, "", []) else ""
    info = typer.Option(None, *names, help=meta["help"] + shown, show_default=False, metavar=meta["metavar"],
                        rich_help_panel=meta["panel"])
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)


def extra_options(options: type, into: str):
    """Give a hand-written typer command the flags of an options dataclass as well; the command
    receives the flags given, as one dict, in its parameter `into`."""
    def wrap(run):
        extra = parameters(options)
        resolved = typing.get_type_hints(run)  # the command module's names, not this one's
        params = [p.replace(annotation=resolved.get(p.name, p.annotation))
                  for p in inspect.signature(run).parameters.values() if p.name != into] + extra

        def command(**values):
            given = {p.name: values.pop(p.name) for p in extra}
            return run(**values, **{into: {k: v for k, v in given.items() if v is not None}})

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__, command.__name__ = run.__doc__, run.__name__
        return command
    return wrap
