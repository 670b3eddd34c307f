"""`dus scan`: score a space of layer plans against the base model, without building them."""

from __future__ import annotations

from dus.cli import app
from dus.cli.options import options_command
from dus.scan.options import ScanOptions


@options_command(app, "scan", ScanOptions)
def scan_command(opts: ScanOptions) -> None:
    """Score every repeated-block plan (or --layers, --space dus) by perplexity and/or probes; rank them."""
    from rich.console import Console

    from dus.cli.progress import count_progress
    from dus.quiet import quiet
    from dus.scan.report import table
    from dus.scan.run import scan

    with quiet(opts.verbose), count_progress("scanning plans") as progress:
        record = scan(opts, progress)
    console = Console()
    console.print(table(record, record["select_on"], opts.top))
    console.print("\nbuild the best:", style="bold")
    for command in record["build"]:
        console.print(f"  {command}", soft_wrap=True, highlight=False)
    console.print(f"\nwrote {', '.join(record['files'].values())} ({record['seconds']:.0f}s)", soft_wrap=True)
