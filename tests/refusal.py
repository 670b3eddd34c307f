"""The one check of a refusal: exit code, exactly one `error: ...` line on stderr (no traceback), and
nothing written. Every test of bad input or a failed run uses it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(directory) -> dict[str, str]:
    """{path under `directory`: sha256 of a file, "dir" for a directory}, hidden entries included."""
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


def assert_refused(code: int, err: str, *fragments: str, exit_code: int = 2, outputs=(), unchanged=None) -> str:
    """`code` is `exit_code`; stderr is one line, `error: ...`, holding every fragment. Nothing written:
    no path in `outputs` exists, nor a staging directory or lock of it beside it; `unchanged`, a
    (directory, its snapshot() before the command), still reads the same. Returns the line."""
    lines = err.strip("\n").split("\n")
    assert code == exit_code and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    for output in map(Path, [outputs] if isinstance(outputs, (str, Path)) else outputs):
        assert not output.exists(), f"{output} was written"
        if output.parent.is_dir():
            assert not [p.name for p in output.parent.glob(f".{output.name}.dus-*")], f"{output}: leftovers"
    if unchanged is not None:
        directory, before = unchanged
        assert snapshot(directory) == before, f"{directory} changed"
    return lines[0]
