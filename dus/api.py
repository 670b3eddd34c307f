"""The Python API: `dus.plan`, `dus.build`, `dus.verify`. The CLI calls these.

    import dus
    report = dus.plan("mistralai/Mistral-7B-v0.1", overlap=8)
    dus.build("mistralai/Mistral-7B-v0.1", "solar-base", preset="solar")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dus.errors import InputError
from dus.plan.config import planned_config
from dus.plan.layout import TensorSpec, layout, num_parameters, output_bytes
from dus.plan.make import make_plan, resolve_options
from dus.plan.model import Plan
from dus.read.source import Source, open_source

from dus.manifest import MANIFEST_FILE as PLAN_FILE
from dus.manifest import read_manifest as read_plan_record  # noqa: F401  (the one reader, re-exported)


@dataclass
class ResolvedPlan:
    """A plan bound to its opened sources: every output tensor and the output config."""

    plan: Plan
    sources: dict[str, Source]
    tensors: list[TensorSpec]
    config: dict
    options: dict = field(default_factory=dict)

    @property
    def base(self) -> Source:
        return self.sources[self.plan.base]

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.tensors)

    @property
    def output_bytes(self) -> int:
        return output_bytes(self.tensors)

    def to_json(self) -> dict:
        """The `dus plan --json` object."""
        return {
            "source": self.base.ref,
            "source_num_layers": self.base.num_layers,
            "num_layers": len(self.plan.layers),
            "layer_prefix": self.base.layer_prefix,
            "recipe": self.plan.recipe,
            "dtype": self.plan.dtype,
            "layers": self.plan.to_json()["layers"],
            "num_parameters": self.num_parameters,
            "source_num_parameters": sum(info.numel for info in self.base.tensors.values()),
            "output_bytes": self.output_bytes,
            "num_tensors": len(self.tensors),
            "config": self.config,
        }


def plan(source: str | None = None, *, overlap: int | None = None, layers=None, recipe: str | None = None,
         factor: int | None = None, group: int | None = None, new_layers: int | None = None,
         dtype: str | None = None, preset: str | None = None, config: str | None = None,
         sources: dict[str, str] | None = None, need_weights: bool = False) -> ResolvedPlan:
    """Resolve a plan from headers only (no weights are read)."""
    options = resolve_options(
        {"source": source, "overlap": overlap, "layers": layers, "recipe": recipe, "factor": factor,
         "group": group, "new_layers": new_layers, "dtype": dtype, "sources": sources},
        recipe_file=config, preset_name=preset)
    refs = _source_refs(options)
    opened = {name: open_source(ref, need_weights=need_weights) for name, ref in refs.items()}
    the_plan = make_plan(opened, options)
    tensors = layout(the_plan, opened)
    config_out = planned_config(the_plan, opened[the_plan.base].config)
    return ResolvedPlan(the_plan, opened, tensors, config_out, options)


def _source_refs(options: dict) -> dict[str, str]:
    if options.get("sources"):
        refs = dict(options["sources"])
        if options.get("source") and options["source"] not in refs.values():
            refs = {"base": options["source"], **{k: v for k, v in refs.items() if k != "base"}}
        return refs
    if not options.get("source"):
        raise InputError("no SOURCE given (as an argument or `source:` in the recipe file)")
    return {"base": str(options["source"])}


def build(source: str | None, output: str | Path, *, shard_size: str | int | None = None, force: bool = False,
          verify: bool = False, progress: Callable[[int], None] | None = None, file_sha256: bool = False,
          **plan_options) -> dict:
    """Build OUTPUT from SOURCE by the plan; return the written dus_plan.json record.

    Each shard's BLAKE3 is recorded for `dus verify`; `file_sha256` records its SHA-256
    instead (the Hub's file hash; slower to compute than the copy on some CPUs)."""
    from dus.write.build import write_model
    from dus.write.digest import build_digest

    resolved = plan(source, need_weights=True, **plan_options)
    shard_size = shard_size or resolved.options.get("shard_size") or "5GB"
    record = write_model(resolved, Path(output), parse_size(shard_size), force=force, progress=progress,
                         digest=build_digest(file_sha256))
    if verify:
        from dus.verify.check import verify_model

        verify_model(Path(output))
    return record


def verify(output: str | Path, source: str | None = None):
    from dus.verify.check import verify_model

    return verify_model(Path(output), source)


def parse_size(size: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as Hugging Face uses), '2GiB' -> 2 * 2**30."""
    if isinstance(size, int):
        value = size
    else:
        text = size.strip().upper().replace(" ", "")
        units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
                 "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
        for unit, scale in units.items():
            if text.endswith(unit):
                text, factor = text[: -len(unit)], scale
                break
        else:
            factor = 1
        try:
            value = int(float(text) * factor)
        except ValueError:
            raise InputError(f"cannot parse size {size!r}: use e.g. 5GB, 500MB or 2GiB") from None
    if value <= 0:
        raise InputError(f"shard size must be positive, got {size!r}")
    return value
