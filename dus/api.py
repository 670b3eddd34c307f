"""The Python API: `dus.plan`, `dus.build`, `dus.verify`. The CLI calls these.

import dus
report = dus.plan("mistralai/Mistral-7B-v0.1", overlap=8)
dus.build("mistralai/Mistral-7B-v0.1", "solar-base", preset="solar")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dus.checks.config_check import check_output, check_source
from dus.checks.run import start_checks
from dus.errors import InputError

# Re-exported for API users: the plan-file name and its reader live with the manifest.
from dus.manifest import MANIFEST_FILE as PLAN_FILE  # noqa: E402,F401
from dus.plan.config import equivalence_request, planned_config
from dus.plan.make import make_plan
from dus.plan.options import PlanOptions, plan_options
from dus.plan.resolved import ResolvedPlan
from dus.plan.tensors import planned_tensors
from dus.read.gguf import is_gguf
from dus.read.source import Source, open_source


def plan(
    source: str | None = None,
    *,
    config: str | None = None,
    options: PlanOptions | None = None,
    need_weights: bool = False,
    _checks_in_background: bool = False,
    **keywords,
) -> ResolvedPlan:
    """Resolve a plan from headers only (no weights are read).

    The plan options are PlanOptions' fields (dus/plan/options.py: overlap=, layers=, recipe=, factor=,
    group=, new_layers=, dtype=, preset=, sources=, config_overrides=, stack=, allow_index_dependent=, width=,
    mlp_width=, width_noise=, width_seed=, init=, insert_at=...),
    as keywords over the recipe file `config`, or one PlanOptions as `options`.

    Refuses a plan whose output layers transformers would build differently from
    their source layers; allow_index_dependent accepts (and records) differences
    that come only from a layer's index. `stack` names the numbered tensor-name prefix to grow
    where a checkpoint holds several (a multimodal model's language model beside its vision tower).
    `experts` (with top_k, expert_init copy|drop|split|noise, expert_seed, drop_ratio, noise_scale,
    router_std, calibration) also upcycles every output layer's MLP into a mixture of experts (docs/upcycle.md)."""
    options = _options(source, config, options, keywords)
    refs = _source_refs(options)
    if any(is_gguf(ref) for ref in refs.values()):
        from dus.plan.gguf import check_gguf_options

        check_gguf_options(options, refs)
    opened = {name: _open(ref, need_weights, options.stack) for name, ref in refs.items()}
    for ref, source in zip(refs.values(), opened.values()):
        if not is_gguf(ref):  # a GGUF's reader checks its own metadata
            check_source(source)
    the_plan = make_plan(opened, options)
    if is_gguf(refs[the_plan.base]):
        from dus.plan.gguf import resolve_gguf

        return resolve_gguf(the_plan, opened, options)
    tensors = planned_tensors(the_plan, opened)
    base = opened[the_plan.base]
    config_out = planned_config(the_plan, base.config)
    check_output(config_out, len(the_plan.layers), stack_config=base.stack_config)
    checks = start_checks(
        opened,
        config_out,
        [t.name for t in tensors],
        layers=equivalence_request(the_plan, base, config_out, options.allow_index_dependent),
    )
    resolved = ResolvedPlan(the_plan, opened, tensors, config_out, options, checks=checks)
    if not _checks_in_background:
        resolved.finish_checks()
    return resolved


def _options(source, config, options: PlanOptions | None, keywords: dict) -> PlanOptions:
    if options is None:
        return plan_options({"source": source, **keywords}, config)
    if source is not None or config is not None or keywords:
        raise TypeError("give the plan options either as one PlanOptions or as keywords, not both")
    return options


def _open(ref: str, need_weights: bool, stack: str | None = None) -> Source:
    if is_gguf(ref):
        if stack:
            raise InputError("--stack is for safetensors checkpoints; a GGUF holds one stack")
        from dus.read.gguf import open_gguf_source

        return open_gguf_source(ref)
    return open_source(ref, need_weights=need_weights, stack=stack)


def _source_refs(options: PlanOptions) -> dict[str, str]:
    if options.sources:
        if not isinstance(options.sources, dict):
            raise InputError(f"sources must be a mapping of name: model, got {options.sources!r}")
        refs = dict(options.sources)
        if options.source and options.source not in refs.values():
            refs = {"base": options.source, **{k: v for k, v in refs.items() if k != "base"}}
        return refs
    if not options.source:
        raise InputError("no SOURCE given (as an argument or `source:` in the recipe file)")
    return {"base": str(options.source)}


def build(
    source: str | None,
    output: str | Path,
    *,
    shard_size: str | int | None = None,
    force: bool = False,
    verify: bool = False,
    progress: Callable[[int], None] | None = None,
    file_sha256: bool = False,
    **plan_options,
) -> dict:
    """Build OUTPUT from SOURCE by the plan (`plan_options`: as for `plan`); return the written dus_plan.json
    record. `shard_size` wins over the recipe's.

    Each shard's BLAKE3 is recorded for `dus verify`; `file_sha256` records its SHA-256
    instead (the Hub's file hash; slower to compute than the copy on some CPUs)."""
    from dus.core.digest import build_digest
    from dus.write.build import write_model

    # transformers' checks run beside the copy; nothing is published before they pass
    resolved = plan(source, need_weights=True, _checks_in_background=True, **plan_options)
    if is_gguf(resolved.base.ref) or is_gguf(output):
        return _build_gguf(resolved, Path(output), shard_size, force, verify, progress)
    shard_size = shard_size or resolved.options.shard_size or "5GB"
    record = write_model(
        resolved, Path(output), parse_size(shard_size), force=force, progress=progress, digest=build_digest(file_sha256)
    )
    if verify:
        from dus.verify.check import verify_model

        verify_model(Path(output))
    return record


def upcycle(
    source: str, output: str | Path, *, experts: int, top_k: int = 2, expert_init: str = "copy", **build_options
) -> dict:
    """`dus upcycle`: OUTPUT is SOURCE with every layer's MLP grown into `experts` experts (docs/upcycle.md)."""
    build_options.setdefault("recipe", "stack")  # every layer once, in order: the depth plan that changes nothing
    build_options.setdefault("factor", 1)
    return build(source, output, experts=experts, top_k=top_k, expert_init=expert_init, **build_options)


def _build_gguf(resolved: ResolvedPlan, output: Path, shard_size, force: bool, verify: bool, progress) -> dict:
    """GGUF in, GGUF out: split only when a shard size is given (as gguf-split does)."""
    from dus.write.gguf import write_gguf

    if not (is_gguf(resolved.base.ref) and is_gguf(output)):
        raise InputError(
            "a GGUF source builds a GGUF: give an OUTPUT ending in .gguf (a safetensors output would need "
            "de-quantization)"
            if is_gguf(resolved.base.ref)
            else "a .gguf OUTPUT needs a .gguf SOURCE (convert the model with llama.cpp's convert_hf_to_gguf.py)"
        )
    shard_size = shard_size or resolved.options.shard_size
    record = write_gguf(resolved, output, parse_size(shard_size) if shard_size else None, force, progress)
    if verify:
        from dus.verify.gguf import verify_gguf

        verify_gguf(output)
    return record


def verify(output: str | Path, source: str | None = None):
    if is_gguf(output):
        from dus.verify.gguf import verify_gguf

        return verify_gguf(Path(output), source)
    from dus.verify.check import verify_model

    return verify_model(Path(output), source)


def parse_size(size: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as Hugging Face uses), '2GiB' -> 2 * 2**30."""
    if isinstance(size, int):
        value = size
    else:
        text = size.strip().upper().replace(" ", "")
        units = {
            "KIB": 2**10,
            "MIB": 2**20,
            "GIB": 2**30,
            "TIB": 2**40,
            "KB": 10**3,
            "MB": 10**6,
            "GB": 10**9,
            "TB": 10**12,
            "B": 1,
        }
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
