"""`dus compare BASE GROWN...`: perplexity and a greedy reply, side by side (dus/eval/compare.py)."""

from __future__ import annotations

import json
import sys

from dus.cli import app
from dus.cli.options import options_command
from dus.eval.compare import CompareOptions


@options_command(app, "compare", CompareOptions)
def compare_command(opts: CompareOptions) -> None:
    """Compare models side by side: perplexity on one text and a greedy reply to one prompt, as a table.

    dus compare base/ grown/ trained/ --text heldout.txt --prompt "..." [--json]
    """
    from dus.eval.compare import compare_models, table
    from dus.quiet import quiet

    with quiet(opts.verbose):
        result = compare_models(opts, say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if opts.json else table(result))
