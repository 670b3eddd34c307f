"""A done/total bar with the time left (pretrain steps, perplexity windows), outside the CLI package so
the trainer can use it without importing the command line."""

from __future__ import annotations

import sys


class CountBar:
    """Done/total with the time elapsed and left, as a rich bar on a terminal (nothing otherwise). Lines
    printed to stdout while it runs appear above it, so a log keeps its lines and the bar stays last."""

    def __init__(self, label: str, total: int, completed: int = 0, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        console = console or Console(stderr=True)
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(
                f"[bold]{label}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                "left",
                TimeRemainingColumn(),
                console=console,
                transient=True,
                redirect_stdout=sys.stdout.isatty(),
            )  # warnings on stderr go above it too
            self.task = self.progress.add_task(label, total=total, completed=completed)
            self.progress.start()

    def advance(self, count: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, count)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> CountBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
