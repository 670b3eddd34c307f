"""Remembered answers of transformers' plan checks (dus/checks/run.py).

The checks are a pure function of their request (the configs, the tensor
names, the layer map, the options) and of the code that answers it: dus
itself, transformers and torch. Importing the latter two costs 3-4 CPU-seconds
and ~390 MiB, more than the copy itself on a 2-vCPU machine (docs/benchmarks.md).
So an accepted plan is recorded under a key hashing all of that: the request,
every dus source file, and each library's version and installed-file record
(pip's RECORD lists every file's hash). `dus plan` followed by `dus build`, a
rebuild, or `dus verify` of a build then reuse the answer; any change to the
inputs or the code is a new key, and the checks run again. Refusals are not
recorded: they are told afresh each time.

Where: $DUS_CHECK_CACHE, else `checks/` in dus's cache ($DUS_CACHE, else ~/.cache/dus).
Deleting the folder only makes the next build check again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import time
from pathlib import Path

from dus.core.publish import atomic_write_text
from dus.errors import InputError
from dus.read.strict_json import loads
from dus.runtime import cache_root

_PACKAGE = Path(__file__).resolve().parents[1]  # dus/
_LIBRARIES = ("transformers", "torch")


def cache_dir() -> Path:
    if os.environ.get("DUS_CHECK_CACHE"):
        return Path(os.environ["DUS_CHECK_CACHE"])
    return cache_root() / "checks"


def request_key(request: dict) -> str | None:
    """The hex key of a check request with the code that would answer it; None where that code
    cannot be fingerprinted (an editable transformers or torch: its files are not in a RECORD).
    The file names a refusal would quote (`where`) are left out: they change no answer, and an
    accepted one is all that is kept (a build names its source as given, verify by its absolute path)."""
    libraries = [_installed(name) for name in _LIBRARIES]
    if None in libraries:
        return None
    keyed = {
        **request,
        "checks": [
            {k: v for k, v in check.items() if k not in ("where", "names_where")} for check in request.get("checks", [])
        ],
    }
    h = hashlib.sha256(json.dumps(keyed, sort_keys=True, separators=(",", ":")).encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    for library in libraries:
        h.update(library.encode())
    return h.hexdigest()


def _installed(name: str) -> str | None:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} absent"
    record = dist.read_text("RECORD")
    if not record or _editable(dist):
        return None
    return f"{name} {dist.version} {hashlib.sha256(record.encode()).hexdigest()}"


def _editable(dist) -> bool:
    """pip install -e: the code lives in a working tree that RECORD does not list (PEP 610)."""
    try:
        return bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return True  # unreadable: do not trust a fingerprint


def lookup(key: str | None) -> list[str] | None:
    """The accepted answer recorded under key; None when there is none (or it is unreadable)."""
    if key is None:
        return None
    try:
        path = cache_dir() / f"{key}.json"
        entry = loads(path.read_bytes(), str(path))
    except (OSError, InputError):
        return None
    accepted = entry.get("accepted") if isinstance(entry, dict) and entry.get("key") == key else None
    if not (isinstance(accepted, list) and all(isinstance(a, str) for a in accepted)):
        return None
    return accepted


def store(key: str | None, accepted: list[str]) -> None:
    """Record an accepted answer, atomically; a cache that cannot be written is skipped."""
    if key is None:
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{key}.json", json.dumps({"key": key, "accepted": accepted}))
    except OSError:
        return
    _sweep(folder)


def _sweep(folder: Path, older_than_s: float = 3600) -> None:
    """Remove temporary entries a killed run left (`.KEY.json.tmp-*`): an hour old, no write is still going on."""
    now = time.time()
    for path in folder.glob(".*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
