"""A bytes-written progress bar on a terminal, nothing when output is not a TTY."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def byte_progress(label: str):
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(f"[bold]{label}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda nbytes: bar.advance(task, nbytes)


@contextlib.contextmanager
def count_progress(label: str):
    """A done/total bar with the time left, on a terminal; nothing otherwise. Yields update(done, total)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
