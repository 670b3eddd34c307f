"""Command options declared once, as dataclass fields.

A field made with `option()` is at the same time a command-line flag (dus/cli/options.py
builds the flags from `fields()`), a key of the command's YAML --config file (dashes or
underscores, aliases too) and a row of the docs' option table (scripts/option_tables.py).
Precedence: the dataclass default < the --config file < the flags given.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, field, fields
from pathlib import Path

from dus.errors import InputError
from dus.yamlfile import read_mapping


def option(
    default,
    help: str,
    *,
    aliases: tuple[str, ...] = (),
    short: str | None = None,
    positional: bool = False,
    required: bool = False,
    metavar: str | None = None,
    panel: str | None = None,
    cli: bool = True,
):
    """A dataclass field that is also a flag: `--name` (and `--alias`, `-s`), or the command's argument.
    `cli=False`: a --config key (and API keyword) only, for values no flag can spell (a mapping)."""
    meta = {
        "help": help,
        "aliases": aliases,
        "short": short,
        "positional": positional,
        "required": required,
        "metavar": metavar,
        "panel": panel,
        "cli": cli,
    }
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The option's name on the command line and in the docs: seq_len -> seq-len."""
    return name.replace("_", "-")


def default_of(f) -> object:
    return f.default_factory() if f.default is MISSING else f.default


def hints(cls) -> dict:
    return typing.get_type_hints(cls)


def base_type(hint) -> tuple[object, bool]:
    """(the type, whether None is allowed): `int | None` -> (int, True)."""
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def names(cls) -> dict[str, str]:
    """Every spelling a YAML key may take -> the field: seq_len, seq-len, and each alias."""
    spelled = {}
    for f in fields(cls):
        for name in (f.name, *f.metadata.get("aliases", ())):
            spelled[name] = spelled[flag(name)] = f.name
    return spelled


def from_mapping(cls, values: dict, source: str = "options"):
    """An instance of `cls` from YAML values or flags; unknown keys and bad values are an InputError."""
    known, types, kwargs = names(cls), hints(cls), {}
    for key, value in values.items():
        name = known.get(str(key))
        if name is None:
            raise InputError(f"unknown option {key!r} in {source}")
        kwargs[name] = coerce(name, types[name], value, source)
    for f in fields(cls):
        if f.metadata.get("required") and not kwargs.get(f.name):
            where = (f.metadata["metavar"] or f.name.upper()) if f.metadata["positional"] else f"--{flag(f.name)}"
            raise InputError(f"missing {where}: give it on the command line or as `{f.name}:` in --config")
    return cls(**kwargs)


def load(cls, config: str | Path | None, flags: dict):
    """The --config file's keys, then every flag given (typer passes None for a flag not given)."""
    values = dict(read_mapping(config)) if config else {}
    values = {names(cls).get(str(k), str(k)): v for k, v in values.items()}
    values.update({k: v for k, v in flags.items() if v is not None})
    return from_mapping(cls, values, str(config) if config else "options")


def coerce(name: str, hint, value, source: str):
    """YAML gives strings for '3e-5' and scalars for one-item lists; accept both."""
    kind, optional = base_type(hint)
    if (value is None and optional) or kind is object:  # object: any YAML value, checked where it is used
        return value
    try:
        if kind == list[str]:
            return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind is int:
            number = float(value)
            if number != int(number):
                raise ValueError("expected an integer")
            return int(number)
        if kind is float:
            return float(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"bad value {value!r} for {name!r} in {source}: {e}") from None


# Options several commands share, declared once.
def device_option():
    return option("auto", "auto | cpu | cuda | cuda:N | mps [auto: CUDA when present].")


def dtype_option(help: str = "auto | bfloat16 | float16 | float32 [auto: bf16 on a GPU that has it]."):
    return option("auto", help)


def seed_option():
    return option(0, "Seed for every random choice.")


def verbose_option():
    return option(False, "Show library progress bars and warnings.")


def markdown_table(cls) -> str:
    """The docs' table of a command's options: key (as in --config and on the command line), default, meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields(cls):
        meaning = f.metadata["help"]
        if f.metadata.get("positional"):
            meaning += f"; the argument {f.metadata['metavar'] or f.name.upper()}"
        rows.append(f"| `{flag(f.name)}` | {_shown(default_of(f))} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def _shown(default) -> str:
    if isinstance(default, bool):
        return str(default).lower()  # as YAML writes it
    return "" if default in (None, "", []) else str(default)
