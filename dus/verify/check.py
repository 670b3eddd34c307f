"""`dus verify`: prove an output directory is exactly what its dus_plan.json says.

The plan is resolved again against its sources, so every expectation is
derived, not copied from the output: tensor names, dtypes and shapes; the
config; what the build asked transformers (dus/checks/run.py: it accepts the
configs, the model it builds finds every weight it needs, and it builds every
output layer as its source layer, or the build recorded, with
--allow-index-dependent, where it does not), answered from the check cache
when the same code answered it before; then, in one read of each shard, its
digest (the BLAKE3 or SHA-256 the record holds: dus/core/digest.py) and every
tensor's bytes (compared in bounded chunks against the planned source bytes,
or against the recomputed blend/scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dus.core.digest import DIGESTS, HASH_CHUNK, ShardHasher, file_digest, recorded_digest
from dus.errors import DusError, InputError
from dus.manifest import MANIFEST_FILE, lineage, read_manifest, stage_of
from dus.plan.computed_record import computed_record
from dus.plan.config import planned_config
from dus.plan.layout import TensorSpec
from dus.plan.model import Plan
from dus.plan.per_layer import rearranged
from dus.plan.tensors import planned_tensors
from dus.read import strict_json
from dus.read.safetensors import TensorInfo
from dus.read.source import local_tensors, meta_tensors, open_source
from dus.write.compute import tensor_bytes
from dus.write.gather import block_chunks, block_ranges


class VerifyError(DusError):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(f"verification failed: {message}")


@dataclass
class VerifyReport:
    output: Path
    checks: list[str] = field(default_factory=list)
    lineage: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return f"verified {self.output}: " + "; ".join(self.checks)


def verify_model(output: Path, source: str | None = None) -> VerifyReport:
    """Check OUTPUT against its manifest; a build is also proven byte for byte against its sources."""
    record = read_manifest(output)
    if stage_of(record) == "build":
        report = _verify_build(output, record, source)
    else:
        report = _verify_trained(output, record)
    report.lineage = _check_lineage(output)
    return report


def _check_lineage(output: Path) -> list[dict]:
    chain = lineage(output)
    if chain[-1]["status"] == "changed":
        link = chain[-1]
        raise VerifyError(
            f"parent {link['ref']} ({link['stage']}) changed since this model was made from it: "
            f"its {MANIFEST_FILE} differs from the digest recorded here"
        )
    return chain


def _verify_trained(output: Path, record: dict) -> VerifyReport:
    """A trained model (pretrain, sft, dpo): its shards are the ones recorded, byte for byte,
    and transformers builds its config into a model of as many weights."""
    report = VerifyReport(output)
    shards = _recorded_shards(output, record)
    kind = recorded_digest(shards)
    if kind is None:
        raise VerifyError(
            f"{MANIFEST_FILE} must record one digest kind ({' or '.join(DIGESTS)}), the same for every shard"
        )
    for name, recorded in shards.items():
        got = file_digest(output / name, kind)
        if got != recorded:
            raise VerifyError(
                f"{name}: {kind} {got[kind][:16]}… ({got['bytes']:,} bytes) differs from the recorded "
                f"{recorded[kind][:16]}… ({recorded['bytes']:,} bytes)"
            )
    report.checks.append(f"{len(shards)} shard {kind} match")
    try:
        tensors = local_tensors(output) or {}
    except InputError as e:
        raise VerifyError(str(e)) from None
    path = output / "config.json"
    if not path.is_file():
        raise VerifyError("config.json is missing")
    report.checks.append(_check_transformers(strict_json.loads(path.read_bytes(), str(path)), tensors))
    return report


def _verify_build(output: Path, record: dict, source: str | None) -> VerifyReport:
    report = VerifyReport(output)
    shards = _recorded_shards(output, record)
    try:
        tensors = local_tensors(output) or {}
    except InputError as e:  # a damaged header is a failed verification, not a bad argument
        raise VerifyError(str(e)) from None
    plan = Plan.from_json(record["plan"])
    # A Hub source is read at the revision the build recorded: a repo changed since is not a failure.
    refs = {name: (s["ref"], s.get("revision")) for name, s in record["sources"].items()}
    if source:
        refs[plan.base] = (source, None)
    sources = {
        name: open_source(ref, stack=plan.recipe.get("stack"), revision=revision)
        for name, (ref, revision) in refs.items()
    }
    expected = planned_tensors(plan, sources)
    if record.get("rearranged", {}) != rearranged(expected, plan.layers):
        raise VerifyError(f"{MANIFEST_FILE}'s record of the tensors rearranged block by block differs from its plan's")
    # The cheap checks first: a wrong config should not wait for gigabytes of reading.
    report.checks.append(_check_names_shapes(expected, tensors))
    if record.get("computed", {}) != computed_record(expected, sources):
        raise VerifyError(f"the computed-tensor recipes {MANIFEST_FILE} records differ from the ones its plan derives")
    _check_config(output, plan, sources[plan.base].config)
    report.checks.append(f"config.json as planned ({len(plan.layers)} layers)")
    pending = _start_plan_checks(record, plan, sources, expected)  # beside the shard pass, where not cached
    try:
        shard_checks = _check_shards(output, shards, expected, tensors)
    except BaseException:
        pending.cancel()
        raise
    report.checks.extend(_plan_checks(pending))
    report.checks.extend(shard_checks)
    return report


def _recorded_shards(output: Path, record: dict) -> dict[str, dict]:
    shards = record.get("output", {}).get("shards", {})
    present = sorted(p.name for p in output.glob("*.safetensors"))
    if sorted(shards) != present:
        raise VerifyError(f"shards on disk {present} differ from the {sorted(shards)} {MANIFEST_FILE} records")
    return shards


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
            raise VerifyError(
                f"tensor {spec.name!r} is {got.dtype}{list(got.shape)}, planned {spec.dtype}{list(spec.shape)}"
            )
    return f"{len(expected)} tensor names, dtypes and shapes match"


def _check_shards(
    output: Path, shards: dict[str, dict], expected: list[TensorSpec], tensors: dict[str, TensorInfo]
) -> list[str]:
    """Read each shard once, front to back: a second thread hashes every byte read while
    each tensor is compared with its planned source bytes (or the recomputed blend/scale).
    A shard whose hash differs is reported before a tensor that differs inside it."""
    kind = recorded_digest(shards)
    if kind is None:
        raise VerifyError(
            f"dus_plan.json must record one digest kind ({' or '.join(DIGESTS)}), the same for every shard"
        )
    shard_of = {str(output / name): name for name in shards}
    in_shard: dict[str, list[TensorSpec]] = {name: [] for name in shards}
    for spec in expected:
        path = tensors[spec.name].path
        if path not in shard_of:  # the index may point anywhere inside OUTPUT
            raise VerifyError(f"tensor {spec.name!r} is in {path}, not in a shard dus_plan.json lists")
        in_shard[shard_of[path]].append(spec)
    hasher, differs = ShardHasher(digest=DIGESTS[kind]), {}
    try:
        for name in shards:
            hasher.start()
            with open(output / name, "rb") as f:
                for spec in sorted(in_shard[name], key=lambda s: tensors[s.name].start):
                    got = tensors[spec.name]
                    hasher.add_bytes(f.read(got.start - f.tell()))  # the header
                    if not _same_bytes(spec, f, got.nbytes, hasher):
                        differs.setdefault(name, spec)
                while chunk := f.read(HASH_CHUNK):
                    hasher.add_bytes(chunk)
    except BaseException:
        hasher.cancel()
        raise
    for (name, recorded), digest in zip(shards.items(), hasher.finish()):
        if digest != recorded[kind]:
            raise VerifyError(f"{name}: {kind} {digest[:16]}… differs from the recorded {recorded[kind][:16]}…")
        if name in differs:
            spec = differs[name]
            planned = spec.parts[0][0].path if spec.parts else "zeros"
            raise VerifyError(
                f"tensor {spec.name!r} bytes differ from its planned source ({os.path.basename(planned)})"
            )
    copies = sum(spec.is_byte_copy or spec.is_block_copy for spec in expected)
    return [
        f"{len(shards)} shard {kind} match",
        f"bytes of all tensors match their sources ({copies} copies, {len(expected) - copies} computed)",
    ]


def _same_bytes(spec: TensorSpec, out, nbytes: int, hasher: ShardHasher) -> bool:
    """Compare the next `nbytes` of `out` with the planned bytes, handing them all to `hasher`."""
    if spec.is_block_copy and spec.nbytes == nbytes:
        ranges = block_ranges(spec)
        if ranges is None:
            return _same_chunks(block_chunks(spec), out, hasher)
        return all([_same_range(path, start, count, out, hasher) for path, start, count in ranges])  # read all
    if not spec.is_byte_copy:
        got = out.read(nbytes)
        hasher.add_bytes(got)
        return got == tensor_bytes(spec)
    source = spec.parts[0][0]
    return _same_range(source.path, source.start, nbytes, out, hasher) and source.nbytes == nbytes


def _same_range(path: str, start: int, nbytes: int, out, hasher: ShardHasher) -> bool:
    """Compare the next `nbytes` of `out` with `path`'s bytes from `start`, handing them all to `hasher`."""
    same = True
    with open(path, "rb") as f:
        f.seek(start)
        left = nbytes
        while left:
            got = out.read(min(HASH_CHUNK, left))
            if not got:  # the shard shrank under us
                return False
            hasher.add_bytes(got)
            same = same and f.read(len(got)) == got
            left -= len(got)
    return same


def _same_chunks(chunks, out, hasher: ShardHasher) -> bool:
    same = True
    for want in chunks:
        got = out.read(len(want))
        hasher.add_bytes(got)
        same = same and got == want
    return same


def _check_config(output: Path, plan: Plan, base_config: dict) -> dict:
    path = output / "config.json"
    if not path.is_file():
        raise VerifyError("config.json is missing")
    try:
        config = strict_json.loads(path.read_bytes(), "config.json")
    except InputError as e:
        raise VerifyError(str(e)) from None
    want = planned_config(plan, base_config)
    for key in sorted(set(want) | set(config)):
        if want.get(key, "<absent>") != config.get(key, "<absent>"):
            raise VerifyError(
                f"config.json field {key!r} is {config.get(key, '<absent>')!r}, planned {want.get(key, '<absent>')!r}"
            )
    return config


def _start_plan_checks(record: dict, plan: Plan, sources: dict, expected: list[TensorSpec]):
    """The build's transformers checks of the plan, asked again: the same request (the planned
    config, which config.json equals, and the planned tensor names, which the output's equal)."""
    from dus.checks.run import start_checks
    from dus.plan.config import equivalence_request

    base = sources[plan.base]
    config = planned_config(plan, base.config)
    layers = equivalence_request(plan, base, config, bool(record.get("allow_index_dependent")))
    try:  # where torch is loaded already the checks run here, now, and refuse here
        return start_checks(sources, config, [spec.name for spec in expected], layers)
    except InputError as e:
        raise VerifyError(str(e)) from None


def _plan_checks(pending) -> list[str]:
    try:
        accepted = pending.result()
    except InputError as e:
        raise VerifyError(str(e)) from None
    checks = ["transformers accepts the configs and builds every weight and every layer as planned"]
    if accepted:
        checks.append(
            f"built with --allow-index-dependent: {len(accepted)} layer setting(s) differ from "
            f"their source by the layer index (first: {accepted[0]})"
        )
    return checks


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
        raise VerifyError(
            f"transformers builds a model of {want:,} parameters from config.json, the output holds {got:,}"
        )
    return f"transformers builds the config ({want:,} parameters, as written)"
