"""`dus verify`: prove an output directory is exactly what its dus_plan.json says.

The plan is resolved again against its sources, so every expectation is
derived, not copied from the output: shard hashes, tensor names, dtypes and
shapes, every tensor's bytes (compared in bounded chunks against the planned
source bytes, or against the recomputed blend/scale), the config, and that
transformers builds a model whose parameters match the written tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dus.errors import DusError, InputError
from dus.plan.config import planned_config
from dus.plan.layout import TensorSpec, layout
from dus.plan.model import Plan
from dus.read.safetensors import TensorInfo
from dus.read.source import local_tensors, meta_tensors, open_source
from dus.write.compute import tensor_bytes

CHUNK = 8 * 1024 * 1024


class VerifyError(DusError):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(f"verification failed: {message}")


@dataclass
class VerifyReport:
    output: Path
    checks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"verified {self.output}: " + "; ".join(self.checks)


def verify_model(output: Path, source: str | None = None) -> VerifyReport:
    from dus.api import read_plan_record

    record = read_plan_record(output)
    report = VerifyReport(output)
    report.checks.append(_check_shard_hashes(output, record))
    tensors = local_tensors(output) or {}
    plan = Plan.from_json(record["plan"])
    refs = {name: s["ref"] for name, s in record["sources"].items()}
    if source:
        refs[plan.base] = source
    sources = {name: open_source(ref) for name, ref in refs.items()}
    expected = layout(plan, sources)
    report.checks.append(_check_names_shapes(expected, tensors))
    report.checks.append(_check_bytes(expected, tensors))
    config = _check_config(output, plan, sources[plan.base].config)
    report.checks.append(f"config.json as planned ({len(plan.layers)} layers)")
    report.checks.append(_check_transformers(config, tensors))
    return report


def _check_shard_hashes(output: Path, record: dict) -> str:
    shards = record.get("output", {}).get("shards", {})
    present = sorted(p.name for p in output.glob("*.safetensors"))
    if sorted(shards) != present:
        raise VerifyError(f"shards on disk {present} differ from the plan's {sorted(shards)}")
    for name, expected in shards.items():
        digest = hashlib.sha256()
        with open(output / name, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != expected["sha256"]:
            raise VerifyError(f"{name}: sha256 {digest.hexdigest()[:16]}… differs from the recorded {expected['sha256'][:16]}…")
    return f"{len(shards)} shard sha256 match"


def _check_names_shapes(expected: list[TensorSpec], tensors: dict[str, TensorInfo]) -> str:
    names = {s.name for s in expected}
    missing = [s.name for s in expected if s.name not in tensors]
    if missing:
        raise VerifyError(f"tensor {missing[0]!r} is missing from the output")
    extra = sorted(set(tensors) - names)
    if extra:
        raise VerifyError(f"tensor {extra[0]!r} is in the output but not in the plan")
    for spec in expected:
        got = tensors[spec.name]
        if (got.dtype, got.shape) != (spec.dtype, spec.shape):
            raise VerifyError(f"tensor {spec.name!r} is {got.dtype}{list(got.shape)}, planned {spec.dtype}{list(spec.shape)}")
    return f"{len(expected)} tensor names, dtypes and shapes match"


def _check_bytes(expected: list[TensorSpec], tensors: dict[str, TensorInfo]) -> str:
    copies = 0
    for spec in expected:
        got = tensors[spec.name]
        if spec.is_byte_copy:
            copies += 1
            same = _same_bytes(spec.parts[0][0], got)
        else:
            same = _read(got.path, got.start, got.nbytes) == tensor_bytes(spec)
        if not same:
            planned = spec.parts[0][0].path if spec.parts else "zeros"
            raise VerifyError(f"tensor {spec.name!r} bytes differ from its planned source ({os.path.basename(planned)})")
    return f"bytes of all tensors match their sources ({copies} copies, {len(expected) - copies} computed)"


def _same_bytes(a: TensorInfo, b: TensorInfo) -> bool:
    if a.nbytes != b.nbytes:
        return False
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        fa.seek(a.start)
        fb.seek(b.start)
        left = a.nbytes
        while left:
            size = min(CHUNK, left)
            if fa.read(size) != fb.read(size):
                return False
            left -= size
    return True


def _read(path: str, start: int, nbytes: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(nbytes)


def _check_config(output: Path, plan: Plan, base_config: dict) -> dict:
    path = output / "config.json"
    if not path.is_file():
        raise VerifyError("config.json is missing")
    config = json.loads(path.read_text())
    want = planned_config(plan, base_config)
    for key in sorted(set(want) | set(config)):
        if want.get(key, "<absent>") != config.get(key, "<absent>"):
            raise VerifyError(f"config.json field {key!r} is {config.get(key, '<absent>')!r}, planned {want.get(key, '<absent>')!r}")
    return config


def _check_transformers(config: dict, tensors: dict[str, TensorInfo]) -> str:
    """transformers must accept the config, and the model it builds must hold as many
    weights as were written (names may differ: transformers 5 fuses some on load)."""
    try:
        params = meta_tensors(config)
    except InputError as e:
        raise VerifyError(str(e)) from None
    want = sum(info.numel for info in params.values())
    got = sum(info.numel for info in tensors.values())
    if want != got:
        raise VerifyError(f"transformers builds a model of {want:,} parameters from config.json, the output holds {got:,}")
    return f"transformers builds the config ({want:,} parameters, as written)"
