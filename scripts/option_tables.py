"""Rewrite the option tables in docs/*.md from the option dataclasses, or check that they are current.

    python scripts/option_tables.py          # rewrite
    python scripts/option_tables.py --check  # exit 1 when a table differs (tests/test_options.py runs this)

A table sits between `<!-- options: COMMAND -->` and `<!-- /options -->`; COMMAND is any `dus`
command built from an options dataclass (dus/cli/options.py COMMANDS).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
TABLE = re.compile(r"(<!-- options: (\S+) -->\n).*?(<!-- /options -->)", re.S)


def updated(text: str) -> str:
    import dus.cli  # noqa: F401 (registers the commands)
    from dus.cli.options import COMMANDS
    from dus.options import markdown_table

    return TABLE.sub(lambda m: f"{m[1]}{markdown_table(COMMANDS[m[2]])}\n{m[3]}", text)


def stale() -> list[Path]:
    """The docs pages whose option tables differ from the dataclasses."""
    return [
        p for p in sorted(DOCS.glob("*.md")) if updated(p.read_text(encoding="utf-8")) != p.read_text(encoding="utf-8")
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        pages = stale()
        for page in pages:
            print(f"{page}: option table out of date; run python scripts/option_tables.py", file=sys.stderr)
        return 1 if pages else 0
    for page in stale():
        page.write_text(updated(page.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
