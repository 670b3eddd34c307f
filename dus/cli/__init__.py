"""The `dus` command line: a thin layer over the Python API.

Each group of commands lives in its own module and registers itself on `app`.
`main` turns every expected failure into one `error: ...` line on stderr,
exit code 2 for bad input or usage and 1 for run-time failures; `--debug` or
DUS_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from dus.errors import DusError
from dus.manifest import set_command

app = typer.Typer(
    name="dus",
    help="Depth up-scaling for Hugging Face decoder models: plan, build, verify, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from dus import __version__

        print(f"dus {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show an error's traceback instead of its one line (anywhere on the line; or DUS_DEBUG=1).",
    ),
) -> None:
    pass


# Command modules register on `app` when imported; the order is the help order.
from dus.cli import analyze, compare, instruct, pipeline, scan, surgery, train, upcycle  # noqa: E402,F401


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("DUS_DEBUG", "") not in ("", "0")


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: no half-written output


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"] or ["--help"]
    set_command(argv)  # recorded in the manifest of what the command writes
    try:
        code = app(args=argv, prog_name="dus", standalone_mode=False)
    except DusError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except Exception as e:  # an unexpected failure is still one line unless debugging
        if debug:
            raise
        if _usage_error(e):
            _fail(e.format_message(), e.exit_code)
        _fail(f"{e.__class__.__name__}: {e} (rerun with --debug for the traceback)", 1)
    # Without standalone mode typer returns the exit code of an Exit (130 for Ctrl-C).
    if code == 130:
        _fail("interrupted", 130)
    if isinstance(code, int) and code:
        sys.exit(code)


def _usage_error(e: Exception) -> bool:
    """A click error (bad flag, missing argument): typer keeps its click private, so it is known by its interface."""
    return callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)


def _fail(message: str, code: int) -> None:
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr)
    sys.exit(code)
