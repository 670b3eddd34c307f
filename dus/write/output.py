"""An output directory that appears whole or not at all.

Everything is written into a hidden sibling directory that is renamed onto
OUTPUT at the end; any failure or interrupt removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from dus.errors import InputError


@contextlib.contextmanager
def atomic_directory(output: Path, force: bool = False):
    output = Path(output)
    if output.exists() and not force:
        raise InputError(f"{output} already exists (use --force to replace it)")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output} exists and is not a directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.dus-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if output.exists():
            retired = output.parent / f".{output.name}.dus-old-{os.getpid()}"
            output.rename(retired)
            staging.rename(output)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
