"""Remembered answers of transformers' plan checks (dus/plan/checks.py).

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

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

from dus.errors import InputError
from dus.read.strict_json import loads

_PACKAGE = Path(__file__).resolve().parents[1]  # dus/
_LIBRARIES = ("transformers", "torch")


def cache_dir() -> Path:
    if os.environ.get("DUS_CHECK_CACHE"):
        return Path(os.environ["DUS_CHECK_CACHE"])
    return Path(os.environ.get("DUS_CACHE") or Path.home() / ".cache" / "dus") / "checks"


def request_key(request: dict) -> str:
    """The hex key of a check request with the code that would answer it. The file names a
    refusal would quote (`where`) are left out: they change no answer, and an accepted one
    is all that is kept (a build names its source as given, verify by its absolute path)."""
    keyed = {**request, "checks": [{k: v for k, v in check.items() if k not in ("where", "names_where")}
                                   for check in request.get("checks", [])]}
    h = hashlib.sha256(json.dumps(keyed, sort_keys=True, separators=(",", ":")).encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    for name in _LIBRARIES:
        h.update(_installed(name).encode())
    return h.hexdigest()


def _installed(name: str) -> str:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} absent"
    record = dist.read_text("RECORD") or ""
    return f"{name} {dist.version} {hashlib.sha256(record.encode()).hexdigest()}"


def lookup(key: str) -> list[str] | None:
    """The accepted answer recorded under key; None when there is none (or it is unreadable)."""
    try:
        path = cache_dir() / f"{key}.json"
        entry = loads(path.read_bytes(), str(path))
    except (OSError, InputError):
        return None
    accepted = entry.get("accepted") if isinstance(entry, dict) and entry.get("key") == key else None
    if not (isinstance(accepted, list) and all(isinstance(a, str) for a in accepted)):
        return None
    return accepted


def store(key: str, accepted: list[str]) -> None:
    """Record an accepted answer, atomically; a cache that cannot be written is skipped."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{key}.", delete=False) as f:
            json.dump({"key": key, "accepted": accepted}, f)
        os.replace(f.name, folder / f"{key}.json")
    except OSError:
        try:
            os.unlink(f.name)
        except (OSError, NameError):
            pass
