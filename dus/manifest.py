"""The one manifest every model directory dus writes carries: `dus_plan.json`.

One file name for every stage, so `dus verify DIR` and `dus pipeline` read any
of them the same way. Fields:

    dus_version  the dus that wrote it
    stage        build | pretrain | sft | dpo (absent: a build written before lineage)
    command      the `dus` command line that made it (what `dus pipeline` compares)
    options      that command's resolved options
    parent       {"ref": directory or Hub id, "stage", "manifest": digest of its
                 dus_plan.json} -- for a build, its base source
    data         {absolute path: content fingerprint} of every data file used
    output       {"shards": {name: {"blake3": hex, "bytes": n}}, ...}: the digests
                 of its own shards, the scheme the build uses (dus/core/digest.py)
    plan         the layer map: a build's own, carried to everything trained
                 from it (`--freeze original` reads it)
    sources      build only: what `dus verify` re-reads for the byte-for-byte proof
    provenance   upcycled builds (docs/upcycle.md): each tensor's source tensor, zeros, or operator
    computed     build only, when some tensors are computed (width growth, initialisers):
                 {tensor: {"op", "inputs": ["source:tensor", ...], "params"}}
"""

from __future__ import annotations

import json
from pathlib import Path

from dus.core.digest import DEFAULT, DIGESTS, file_digest, shard_digests
from dus.errors import InputError
from dus.read import strict_json

MANIFEST_FILE = "dus_plan.json"

_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The CLI records the command line it runs, for the manifest of what it writes."""
    global _command
    _command = list(argv)


def command() -> list[str]:
    """The `dus` command line being run; empty when called from Python (dus.api)."""
    return list(_command) if _command is not None else []


def fingerprint(paths) -> dict[str, dict]:
    """{absolute path: fingerprint} of data files or directories (every file under one,
    by relative path and digest); a path that is not on disk (a Hub id) is kept by name."""
    out = {}
    for p in paths:
        if p in (None, ""):
            continue
        path = Path(p).expanduser()
        if path.is_file():
            out[str(path.resolve())] = file_digest(path)
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
            listing = [(str(f.relative_to(path)), file_digest(f)) for f in files]
            h = DIGESTS[DEFAULT](json.dumps(listing).encode())
            out[str(path.resolve())] = {
                DEFAULT: h.hexdigest(),
                "bytes": sum(d["bytes"] for _, d in listing),
                "files": len(listing),
            }
        else:
            out[str(p)] = {"missing": True}
    return out


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        from dus.model_dir import model_dir_error

        raise model_dir_error(directory, manifest=True)
    record = strict_json.loads(path.read_bytes(), str(path))
    if not isinstance(record, dict):
        raise InputError(f"{path}: not a JSON object")
    return record


def stage_of(record: dict) -> str:
    return record.get("stage", "build")


def manifest_digest(directory: str | Path) -> dict | None:
    """The digest of a directory's manifest file, or None where it has none (a Hub id, a plain model)."""
    path = Path(directory) / MANIFEST_FILE
    return file_digest(path) if path.is_file() else None


def local_ref(ref: str) -> str:
    """Local directories become absolute (found from anywhere); Hub ids stay ids."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def parent_entry(ref: str) -> dict:
    entry = {"ref": local_ref(ref), "manifest": manifest_digest(ref) if Path(ref).expanduser().is_dir() else None}
    if entry["manifest"] is not None:
        entry["stage"] = stage_of(read_manifest(ref))
    return entry


def stage_record(
    stage: str, parent: dict, *, command_line: list[str] | None = None, options: dict | None = None, **fields
) -> dict:
    """The record every stage writes (a model's dus_plan.json, a pipeline stage's record), its shared
    fields first: dus_version, stage, command (this run's, unless given), options, parent; then `fields`."""
    from dus import __version__

    record = {
        "dus_version": __version__,
        "stage": stage,
        "command": command() if command_line is None else command_line,
    }
    if options is not None:
        record["options"] = options
    return {**record, "parent": parent, **fields}


def stage_manifest(stage: str, directory: Path, parent: str, options: dict, data: list) -> dict:
    """The manifest of a model `stage` wrote into `directory` (its shards already there)."""
    record = stage_record(
        stage,
        parent_entry(parent),
        options=options,
        data=fingerprint(data),
        output={"shards": shard_digests(directory)},
    )
    if record["parent"]["manifest"] is not None and "plan" in (up := read_manifest(parent)):
        record["plan"] = up["plan"]  # the layers are still the planned ones: --freeze original needs the map
    return record


def write_manifest(directory: Path, record: dict) -> None:
    (Path(directory) / MANIFEST_FILE).write_text(json.dumps(record, indent=2) + "\n")


def lineage(directory: str | Path) -> list[dict]:
    """The chain from `directory` back to the original source, newest first:
    [{"stage", "ref", "status"}], status "ok", or why the chain stops or breaks."""
    chain, ref = [], str(directory)
    record = read_manifest(directory)
    chain.append({"stage": stage_of(record), "ref": local_ref(ref), "status": "ok"})
    while True:
        parent = record.get("parent")
        if "sources" in record and (parent or {}).get("manifest") is None:  # a build from a plain model
            for name, source in record.get("sources", {}).items():
                chain.append({"stage": "source", "ref": source["ref"], "status": name})
            return chain
        if parent.get("manifest") is None:
            chain.append({"stage": "source", "ref": parent["ref"], "status": "no manifest"})
            return chain
        now = manifest_digest(parent["ref"]) if Path(parent["ref"]).is_dir() else None
        if now is None:
            chain.append({"stage": parent.get("stage", "?"), "ref": parent["ref"], "status": "not on this machine"})
            return chain
        if now != parent["manifest"]:
            chain.append({"stage": parent.get("stage", "?"), "ref": parent["ref"], "status": "changed"})
            return chain
        record, ref = read_manifest(parent["ref"]), parent["ref"]
        chain.append({"stage": stage_of(record), "ref": ref, "status": "ok"})


def format_lineage(chain: list[dict]) -> str:
    lines = ["lineage:"]
    for i, link in enumerate(chain):
        arrow = "  " if i == 0 else "  <- "
        note = "" if link["status"] == "ok" else f"  ({link['status']})"
        lines.append(f"{arrow}{link['stage']:<9} {link['ref']}{note}")
    return "\n".join(lines)
