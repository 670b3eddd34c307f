"""Write a resolved plan as a Hugging Face model directory.

Shards (byte copies where possible), the index, config.json, tokenizer and
other side files, a model card and dus_plan.json, all inside a staging
directory that becomes OUTPUT only when everything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from dus import __version__
from dus.api import ResolvedPlan
from dus.manifest import MANIFEST_FILE, command, parent_entry
from dus.write.card import model_card
from dus.write.digest import DEFAULT
from dus.write.output import atomic_directory, require_space
from dus.write.shards import split_shards, write_shards

INDEX_FILE = "model.safetensors.index.json"


def write_model(resolved: ResolvedPlan, output: Path, shard_bytes: int, force: bool = False,
                progress: Callable[[int], None] | None = None, digest: str = DEFAULT) -> dict:
    shards = split_shards(resolved.tensors, shard_bytes)
    with atomic_directory(output, force) as staging:
        # Headers and JSON are not counted: refuse only what clearly cannot fit.
        side_bytes = sum(path.stat().st_size for path in resolved.base.side_files())
        require_space(staging.parent, resolved.output_bytes + side_bytes)
        digests = write_shards(str(staging), shards, progress or (lambda n: None), digest)
        if len(shards) > 1:
            _write_json(staging / INDEX_FILE, {
                "metadata": {"total_size": resolved.output_bytes},
                "weight_map": {s.name: name for name, specs in zip(digests, shards) for s in specs},
            })
        _write_json(staging / "config.json", resolved.config)
        for path in resolved.base.side_files():
            shutil.copyfile(path, staging / path.name)
        record = plan_record(resolved, digests)
        _write_json(staging / MANIFEST_FILE, record)
        (staging / "README.md").write_text(model_card(resolved.plan, resolved.base.num_layers, resolved.num_parameters))
    return record


def plan_record(resolved: ResolvedPlan, digests: dict) -> dict:
    """What dus_plan.json holds: enough to rebuild and to verify the output (dus/manifest.py)."""
    return {
        "dus_version": __version__,
        "stage": "build",
        "command": command(),
        "options": {k: v for k, v in resolved.options.items() if _jsonable(v)},
        "parent": parent_entry(_portable_ref(resolved.base)),
        "sources": {name: {"ref": _portable_ref(s), "revision": s.revision, "num_layers": s.num_layers,
                           "layer_prefix": s.layer_prefix}
                    for name, s in resolved.sources.items()},
        "plan": resolved.plan.to_json(),
        "output": {
            "num_layers": len(resolved.plan.layers),
            "num_parameters": resolved.num_parameters,
            "total_size": resolved.output_bytes,
            "shards": digests,
        },
    }


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def _portable_ref(source) -> str:
    """Hub ids stay ids; local paths are made absolute so verify finds them from anywhere."""
    if source.directory is not None and source.revision is None:
        return str(Path(source.ref).expanduser().resolve())
    return source.ref


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
