"""`dus analyze`: per-layer influence, layer distances and a recommended DUS overlap."""

from __future__ import annotations

from dus.analyze.options import AnalyzeOptions
from dus.cli import app
from dus.cli.options import options_command


@options_command(app, "analyze", AnalyzeOptions)
def analyze_command(opts: AnalyzeOptions) -> None:
    """Measure how much each layer changes the hidden state and how far apart layers are; recommend the overlap m."""
    from dus.analyze import summary
    from dus.analyze.run import build_command, run
    from dus.quiet import quiet

    with quiet(opts.verbose):  # stderr stays clean: progress bars would bury an `error:` line
        result, paths = run(opts)
    print(summary(result))
    print(f"\nwrote {paths['json']}, {paths['influence']}, {paths['distance']}")
    print(f"build it: {build_command(result)}")
