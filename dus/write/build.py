"""Write a resolved plan as a Hugging Face model directory.

Shards (byte copies where possible), the index, config.json, tokenizer and
other side files, a model card and dus_plan.json, all inside a staging
directory that becomes OUTPUT only when everything is written.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dus.core.digest import DEFAULT
from dus.core.publish import atomic_directory, require_space
from dus.manifest import MANIFEST_FILE, parent_entry, stage_record
from dus.plan.computed_record import computed_record
from dus.plan.pattern import broken_pattern_note
from dus.plan.per_layer import rearranged
from dus.plan.resolved import ResolvedPlan
from dus.write.card import model_card, moe_paragraph, pattern_paragraph
from dus.write.shards import split_shards, write_shards

INDEX_FILE = "model.safetensors.index.json"


def write_model(
    resolved: ResolvedPlan,
    output: Path,
    shard_bytes: int,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    digest: str = DEFAULT,
) -> dict:
    shards = split_shards(resolved.tensors, shard_bytes)
    note = broken_pattern_note(resolved.base.config, resolved.config)
    if note:
        print(f"dus: note: {note}", file=sys.stderr)
    try:
        with atomic_directory(output, force) as staging:
            # Headers and JSON are not counted: refuse only what clearly cannot fit.
            side_bytes = sum(path.stat().st_size for path in resolved.base.side_files())
            require_space(staging.parent, resolved.output_bytes + side_bytes)
            digests = write_shards(str(staging), shards, _watching(resolved, progress), digest)
            if len(shards) > 1:
                _write_json(
                    staging / INDEX_FILE,
                    {
                        "metadata": {"total_size": resolved.output_bytes},
                        "weight_map": {s.name: name for name, specs in zip(digests, shards) for s in specs},
                    },
                )
            _write_json(staging / "config.json", resolved.config)
            for path in resolved.base.side_files():
                shutil.copyfile(path, staging / path.name)
            resolved.finish_checks()  # a refusal now leaves nothing: the staging directory goes
            record = build_record(resolved, digests)
            _write_json(staging / MANIFEST_FILE, record)
            card = model_card(
                resolved.plan, resolved.base.num_layers, resolved.num_parameters, resolved.index_dependent
            )
            moe = moe_paragraph(record["plan"]["moe"], record["output"]) if resolved.plan.moe else ""
            (staging / "README.md").write_text(card + pattern_paragraph(note) + moe)
    except BaseException:
        resolved.cancel_checks()  # a failed write needs no verdict: do not leave the checker running
        raise
    return record


def _watching(resolved: ResolvedPlan, progress: Callable[[int], None] | None) -> Callable[[int], None]:
    """Progress that also stops the copy as soon as transformers' checks refuse the plan."""

    def step(nbytes: int) -> None:
        if progress:
            progress(nbytes)
        resolved.raise_if_refused()

    return step


def build_record(resolved: ResolvedPlan, digests: dict) -> dict:
    """What a build's dus_plan.json holds: enough to rebuild and to verify the output (dus/manifest.py)."""
    record = stage_record(
        "build",
        parent_entry(_portable_ref(resolved.base)),
        options=resolved.options.recorded(),
        sources={
            name: {
                "ref": _portable_ref(s),
                "revision": s.revision,
                "num_layers": s.num_layers,
                "layer_prefix": s.layer_prefix,
            }
            for name, s in resolved.sources.items()
        },
        plan=resolved.plan.to_json(),
        output={
            "num_layers": len(resolved.plan.layers),
            "num_parameters": resolved.num_parameters,
            "total_size": resolved.output_bytes,
            "shards": digests,
        },
    )
    computed = computed_record(resolved.tensors, resolved.sources)
    if computed:  # width growth, initialisers: each computed tensor's operator, inputs and parameters
        record["computed"] = computed
    if resolved.plan.moe:  # upcycled: what one token uses, and where every tensor comes from
        from dus.plan.upcycle import parameter_counts, provenance

        record["output"].update(parameter_counts(resolved.plan.moe, resolved.tensors))
        record["provenance"] = provenance(resolved.tensors, resolved.sources)
    blocks = rearranged(resolved.tensors, resolved.plan.layers)
    if blocks:  # tensors packed by layer (per-layer embeddings): which byte blocks each holds
        record["rearranged"] = blocks
    if resolved.index_dependent:  # built with --allow-index-dependent: these layers differ from their sources
        record.update(allow_index_dependent=True, index_dependent=resolved.index_dependent)
    return record


def _portable_ref(source) -> str:
    """Hub ids stay ids; local paths are made absolute so verify finds them from anywhere."""
    if source.directory is not None and source.revision is None:
        return str(Path(source.ref).expanduser().resolve())
    return source.ref


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
