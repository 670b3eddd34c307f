"""`dus verify OUT.gguf`: re-derive every byte of a GGUF build from its source.

A file cannot hold its own sha256, so nothing is taken on trust: the plan
stored in `dus.plan` is resolved again against the source, the expected
header (metadata and tensor infos) is encoded and compared with the file's,
and every tensor's bytes are compared with the planned source bytes, padding
included, in bounded chunks.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from dus.core.digest import HASH_CHUNK
from dus.errors import InputError
from dus.plan.gguf import PLAN_KEY, resolve_gguf
from dus.plan.model import Plan
from dus.plan.options import PlanOptions
from dus.read.gguf import open_gguf_source, read_split_set, split_paths
from dus.read.gguf_format import Cursor, GGUFFile, parse
from dus.verify.check import VerifyError, VerifyReport
from dus.write.gguf import FilePlan, plan_files


def verify_gguf(output: Path, source: str | None = None) -> VerifyReport:
    output = _first_file(Path(output))
    try:
        files = read_split_set(output)
    except InputError as e:  # a damaged header is a failed verification, not a bad argument
        raise VerifyError(str(e)) from None
    stored = files[0].metadata.get(PLAN_KEY)
    if stored is None:
        raise InputError(f"{output}: no {PLAN_KEY} metadata (not built by dus build)")
    try:
        record = json.loads(stored.value)
        plan = Plan.from_json(record["plan"])
        refs = {name: s["ref"] for name, s in record["sources"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{output}: invalid {PLAN_KEY} record ({e})") from None
    if source:
        refs[plan.base] = source
    resolved = resolve_gguf(
        plan, {name: open_gguf_source(ref) for name, ref in refs.items()}, PlanOptions(), stored.value
    )
    base_name = output.name if len(files) == 1 else _unsplit_name(output)
    expected = plan_files(resolved, output.with_name(base_name), [len(f.tensors) for f in files])
    for want, got in zip(expected, files):
        _check_header(want, got)
    for want, got in zip(expected, files):
        _check_data(want, got)
    return VerifyReport(
        output,
        [
            f"{len(files)} file(s): metadata and tensor infos as planned ({len(plan.layers)} layers, "
            f"{len(resolved.metadata)} metadata keys)",
            f"bytes of all {len(resolved.tensors)} tensors match their sources",
        ],
    )


def _first_file(output: Path) -> Path:
    """OUT.gguf itself, or the first file of the split set OUT-00001-of-N.gguf."""
    if output.is_file():
        return output
    firsts = sorted(output.parent.glob(glob.escape(output.name[: -len(".gguf")]) + "-00001-of-?????.gguf"))
    if len(firsts) != 1:
        raise InputError(f"{output}: does not exist")
    return firsts[0]


def _unsplit_name(first: Path) -> str:
    return first.name[: -len("-00001-of-00001.gguf")] + ".gguf" if len(split_paths(first)) > 1 else first.name


def _check_header(want: FilePlan, got: GGUFFile) -> None:
    name = os.path.basename(got.path)
    if want.name != name:
        raise VerifyError(f"{name}: expected the file name {want.name}")
    planned = [(offset + len(want.header), info) for offset, info in want.tensors]
    written = list(got.tensors.items())
    for (start, info), (tensor, written_info) in zip(planned, written):
        if (written_info.dtype, written_info.shape, written_info.start) != (info.dtype, info.shape, start):
            raise VerifyError(
                f"{name}: tensor {tensor!r} is {written_info.dtype}{list(written_info.shape)} "
                f"at byte {written_info.start}, planned {info.dtype}{list(info.shape)} at {start}"
            )
    with open(got.path, "rb") as f:
        header = f.read(len(want.header))
    if header != want.header:
        raise VerifyError(
            f"{name}: header (metadata or tensor names) differs from the plan's; "
            f"first differing key: {_first_difference(want, got)}"
        )
    if os.path.getsize(got.path) != want.size:
        raise VerifyError(f"{name}: {os.path.getsize(got.path)} bytes, planned {want.size}")


def _first_difference(want: FilePlan, got: GGUFFile) -> str:
    planned = parse(Cursor(want.header + b"\0" * (want.size - len(want.header)), want.name), got.path, want.size)
    for key in list(planned.metadata) + [k for k in got.metadata if k not in planned.metadata]:
        if planned.metadata.get(key) != got.metadata.get(key):
            return repr(key)
    return "a tensor name or order"


def _check_data(want: FilePlan, got: GGUFFile) -> None:
    """Compare every byte after the header with the planned source bytes (and zero padding)."""
    name = os.path.basename(got.path)
    handles: dict[str, object] = {}
    try:
        with open(got.path, "rb") as out:
            out.seek(len(want.header))
            for (offset, planned), tensor in zip(want.tensors, got.tensors):
                if out.read(len(want.header) + offset - out.tell()).strip(b"\0"):
                    raise VerifyError(f"{name}: non-zero padding before tensor {tensor!r}")
                if planned.zeros and out.read(planned.zeros) != bytes(planned.zeros):
                    raise VerifyError(f"{name}: tensor {tensor!r} is not the planned zeros")
                for info in planned.pieces:
                    src = handles.get(info.path) or handles.setdefault(info.path, open(info.path, "rb"))
                    src.seek(info.start)
                    left = info.nbytes
                    while left:
                        chunk = out.read(min(HASH_CHUNK, left))
                        if not chunk or chunk != src.read(len(chunk)):
                            raise VerifyError(
                                f"{name}: tensor {tensor!r} bytes differ from its planned source "
                                f"({os.path.basename(info.path)})"
                            )
                        left -= len(chunk)
            if out.read().strip(b"\0"):
                raise VerifyError(f"{name}: non-zero bytes after the last tensor")
    finally:
        for handle in handles.values():
            handle.close()
