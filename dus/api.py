"""The Python API: `dus.plan`, `dus.build`, `dus.verify`. The CLI calls these.

    import dus
    report = dus.plan("mistralai/Mistral-7B-v0.1", overlap=8)
    dus.build("mistralai/Mistral-7B-v0.1", "solar-base", preset="solar")
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dus.errors import InputError
from dus.plan.checks import start_checks
from dus.plan.config import planned_config
from dus.plan.equivalence import equivalence_request
from dus.plan.upcycle import planned_tensors
from dus.plan.make import make_plan, resolve_options
from dus.plan.moe_family import EXPERT_OPTIONS
from dus.plan.resolved import ResolvedPlan
from dus.read.config_check import check_output, check_source
from dus.read.gguf import is_gguf
from dus.read.source import Source, open_source

# Re-exported for API users: the plan-file name and its reader live with the manifest.
from dus.manifest import MANIFEST_FILE as PLAN_FILE, read_manifest as read_plan_record  # noqa: E402,F401


def plan(source: str | None = None, *, overlap: int | None = None, layers=None, recipe: str | None = None,
         factor: int | None = None, group: int | None = None, new_layers: int | None = None,
         dtype: str | None = None, preset: str | None = None, config: str | None = None,
         sources: dict[str, str] | None = None, need_weights: bool = False,
         allow_index_dependent: bool = False, stack: str | None = None,
         experts: int | None = None, top_k: int | None = None, expert_init: str | None = None,
         expert_seed: int | None = None, drop_ratio: float | None = None, noise_scale: float | None = None,
         router_std: float | None = None, calibration: str | None = None,
         _checks_in_background: bool = False) -> ResolvedPlan:
    """Resolve a plan from headers only (no weights are read).

    Refuses a plan whose output layers transformers would build differently from
    their source layers; allow_index_dependent accepts (and records) differences
    that come only from a layer's index. `stack` names the numbered tensor-name prefix to grow
    where a checkpoint holds several (a multimodal model's language model beside its vision tower).
    `experts` (with top_k, expert_init copy|drop|split|noise, expert_seed, drop_ratio, noise_scale,
    router_std, calibration) also upcycles every output layer's MLP into a mixture of experts (docs/upcycle.md)."""
    options = resolve_options(
        {"source": source, "overlap": overlap, "layers": layers, "recipe": recipe, "factor": factor,
         "group": group, "new_layers": new_layers, "dtype": dtype, "sources": sources, "stack": stack,
         "experts": experts, "top_k": top_k, "expert_init": expert_init, "expert_seed": expert_seed,
         "drop_ratio": drop_ratio, "noise_scale": noise_scale, "router_std": router_std,
         "calibration": calibration},
        recipe_file=config, preset_name=preset)
    refs = _source_refs(options)
    if any(is_gguf(ref) for ref in refs.values()):
        from dus.plan.gguf import check_gguf_options

        check_gguf_options(options, refs)
    opened = {name: _open(ref, need_weights, options.get("stack")) for name, ref in refs.items()}
    for ref, source in zip(refs.values(), opened.values()):
        if not is_gguf(ref):  # a GGUF's reader checks its own metadata
            check_source(source)
    the_plan = make_plan(opened, options)
    if any(options.get(key) is not None for key in EXPERT_OPTIONS):
        from dus.plan.upcycle import upcycle_plan

        upcycle_plan(the_plan, opened[the_plan.base], options)
    if is_gguf(refs[the_plan.base]):
        from dus.plan.gguf import resolve_gguf

        return resolve_gguf(the_plan, opened, options)
    tensors = planned_tensors(the_plan, opened)
    base = opened[the_plan.base]
    config_out = planned_config(the_plan, base.config)
    check_output(config_out, len(the_plan.layers), stack_config=base.stack_config)
    checks = start_checks(opened, config_out, [t.name for t in tensors],
                          layers=equivalence_request(the_plan, base, config_out, allow_index_dependent))
    resolved = ResolvedPlan(the_plan, opened, tensors, config_out, options, checks=checks)
    if not _checks_in_background:
        resolved.finish_checks()
    return resolved


def _open(ref: str, need_weights: bool, stack: str | None = None) -> Source:
    if is_gguf(ref):
        if stack:
            raise InputError("--stack is for safetensors checkpoints; a GGUF holds one stack")
        from dus.read.gguf import open_gguf_source

        return open_gguf_source(ref)
    return open_source(ref, need_weights=need_weights, stack=stack)


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

    # transformers' checks run beside the copy; nothing is published before they pass
    resolved = plan(source, need_weights=True, _checks_in_background=True, **plan_options)
    if is_gguf(resolved.base.ref) or is_gguf(output):
        return _build_gguf(resolved, Path(output), shard_size, force, verify, progress)
    shard_size = shard_size or resolved.options.get("shard_size") or "5GB"
    record = write_model(resolved, Path(output), parse_size(shard_size), force=force, progress=progress,
                         digest=build_digest(file_sha256))
    if verify:
        from dus.verify.check import verify_model

        verify_model(Path(output))
    return record


def upcycle(source: str, output: str | Path, *, experts: int, top_k: int = 2, expert_init: str = "copy",
            **build_options) -> dict:
    """`dus upcycle`: OUTPUT is SOURCE with every layer's MLP grown into `experts` experts (docs/upcycle.md)."""
    build_options.setdefault("recipe", "stack")  # every layer once, in order: the depth plan that changes nothing
    build_options.setdefault("factor", 1)
    return build(source, output, experts=experts, top_k=top_k, expert_init=expert_init, **build_options)


def _build_gguf(resolved: ResolvedPlan, output: Path, shard_size, force: bool, verify: bool, progress) -> dict:
    """GGUF in, GGUF out: split only when a shard size is given (as gguf-split does)."""
    from dus.write.gguf import write_gguf

    if not (is_gguf(resolved.base.ref) and is_gguf(output)):
        raise InputError("a GGUF source builds a GGUF: give an OUTPUT ending in .gguf (a safetensors output would need "
                         "de-quantization)" if is_gguf(resolved.base.ref) else
                         "a .gguf OUTPUT needs a .gguf SOURCE (convert the model with llama.cpp's convert_hf_to_gguf.py)")
    shard_size = shard_size or resolved.options.get("shard_size")
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
