"""A pipeline recipe: the build's keys at the top level (so `dus build --config` reads the
same file), and one section per later stage whose keys are that command's options.

    source: mistralai/Mistral-7B-v0.1      # dus build --config keys
    overlap: 8
    build:  {shard-size: 5GB}             # dus build flags
    pretrain: {data: [corpus/], nproc-per-node: 8, ...}
    sft: ...   dpo: ...   contamination: ...   eval: ...
    prepare: pydoc-topics                 # optional: make the tiny local data set first

String values may hold `{workdir}` (the --workdir) and `{smollm2}` (SmolLM2-135M-Instruct,
fetched once by dus/testing/fetch.py).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dus.errors import InputError
from dus.plan.options import PIPELINE_SECTIONS, RECIPE_KEYS
from dus.yamlfile import read_mapping

STAGES = ("build", "pretrain", "sft", "dpo", "contamination", "eval")
MODEL_STAGES = ("build", "pretrain", "sft", "dpo")
SECTIONS = PIPELINE_SECTIONS  # the keys `dus build --config` leaves to the pipeline
PLACEHOLDERS = ("{workdir}", "{smollm2}")
NPROC = "nproc-per-node"  # the one key that is not the command's: how many processes to launch
# Set by the pipeline, never by the recipe (`model:` only in the first stage's section: dus/pipeline/run.py).
SET_BY_PIPELINE = {
    "build": ("config", "output", "force", "source"),
    "pretrain": ("output", "resume", "config"),
    "sft": ("output",),
    "dpo": ("output",),
    "contamination": ("target", "output"),
    "eval": ("output",),
}
# The options naming data files: their content fingerprints decide, with the command, whether a stage is current.
DATA_OPTIONS = {
    "build": (),
    "pretrain": ("data", "eval-data"),
    "sft": ("data", "exclude-tasks", "decontaminate"),
    "dpo": ("data", "exclude-tasks", "decontaminate"),
    "contamination": ("data",),
    "eval": ("perplexity", "include-path"),
}


@dataclass
class Stage:
    name: str
    options: dict = field(default_factory=dict)  # the command's options, keys with dashes
    nproc: int = 1

    def data_paths(self) -> list[str]:
        paths = []
        for key in DATA_OPTIONS[self.name]:
            value = self.options.get(key)
            paths += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
        return paths


@dataclass
class Recipe:
    path: Path
    build_keys: dict  # the `dus build --config` part
    build_config: bool  # the recipe file itself serves `dus build --config` (no placeholder in its keys)
    stages: list[Stage]
    prepare: str | None = None


def load_recipe(path: str | Path, workdir: Path) -> Recipe:
    data = read_mapping(path)
    build_text = repr({k: v for k, v in data.items() if k in RECIPE_KEYS})
    plain = not any(name in build_text for name in PLACEHOLDERS)
    if "{smollm2}" in repr(data):
        from dus.testing.fetch import fetch_smollm2

        smollm2 = str(fetch_smollm2())
    else:
        smollm2 = ""
    data = _substitute(data, dict(zip(PLACEHOLDERS, (str(workdir), smollm2))))
    build_keys = {k: v for k, v in data.items() if k in RECIPE_KEYS}
    unknown = sorted(set(data) - RECIPE_KEYS - set(SECTIONS))
    if unknown:
        raise InputError(
            f"{path}: unknown key {unknown[0]!r} (stages: {', '.join(STAGES)}; build keys: "
            f"{', '.join(sorted(RECIPE_KEYS))})"
        )
    stages = []
    for name in STAGES:
        section = data.get(name)
        if name == "build" and build_keys:
            section = section or {}
        if section is None:
            continue
        if not isinstance(section, dict):
            raise InputError(f"{path}: `{name}:` must be a mapping of `dus {name}` options")
        options = {str(k).replace("_", "-"): v for k, v in section.items()}
        nproc = options.pop(NPROC, 1)
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise InputError(f"{path}: {name}: `{NPROC}` must be a whole number >= 1, not {nproc!r}")
        for key in options:
            if key.replace("-", "_") in SET_BY_PIPELINE[name]:
                raise InputError(
                    f"{path}: {name}: `{key}` is set by the pipeline (the previous stage's output, WORKDIR/{name}/)"
                )
        stages.append(Stage(name, options, nproc))
    if not stages:
        raise InputError(f"{path}: no stage to run (give build keys or any of: {', '.join(STAGES[1:])})")
    prepare = data.get("prepare")
    return Recipe(Path(path).resolve(), build_keys, plain, stages, str(prepare) if prepare else None)


def _substitute(value, names: dict[str, str]):
    if isinstance(value, str):
        for name, text in names.items():
            value = value.replace(name, text)
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def command_argv(stage: Stage, positional: list[str], output: str | None, flags: Callable[[str], dict]) -> list[str]:
    """`dus STAGE ...` as argv: positional arguments, --output, then the recipe's options as flags.
    `flags(stage)` gives {option name without dashes: its click parameter} (dus.cli.pipeline reads
    them from the command itself, so a recipe's keys are exactly the command's options)."""
    params = flags(stage.name)
    argv = [stage.name, *positional] + (["--output", output] if output else [])
    for key, value in stage.options.items():
        param = params.get(key)
        if param is None:
            raise InputError(
                f"{stage.name}: unknown option {key!r} for `dus {stage.name}` "
                f"(known: {', '.join(sorted(k for k in params if k not in SET_BY_PIPELINE[stage.name]))})"
            )
        argv += _flag_values(key, param, value)
    return argv


def _flag_values(key: str, param, value) -> list[str]:
    flag = "--" + key
    if value is None:
        return []
    if param.is_flag:
        if not isinstance(value, bool):
            raise InputError(f"--{key} is a switch: give true or false, not {value!r}")
        if value:
            return [flag]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    if isinstance(value, list):
        if not param.multiple:
            raise InputError(f"--{key} takes one value, not a list")
        return [text for v in value for text in (flag, str(v))]
    return [flag, str(value)]


def launcher(stage: Stage, by_hand: bool = False) -> list[str]:
    """How a stage's process starts: torchrun for pretrain (FSDP2), accelerate for the TRL and
    lm-eval stages, when more than one process; else one plain process."""
    if stage.nproc > 1:
        if stage.name == "pretrain":
            return ["torchrun", "--nproc-per-node", str(stage.nproc), "-m", "dus"]
        return ["accelerate", "launch", "--num_processes", str(stage.nproc), "-m", "dus"]
    return ["dus"] if by_hand else [sys.executable, "-m", "dus"]


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
