"""Rewrite docs/upcycle.md's family table from dus/plan/moe_family.py, or check that it is current.

    python scripts/upcycle_table.py          # rewrite
    python scripts/upcycle_table.py --check  # exit 1 when the table differs (tests/test_upcycle.py runs this)

The table sits between `<!-- upcycle-families -->` and `<!-- /upcycle-families -->`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "upcycle.md"
TABLE = re.compile(r"(<!-- upcycle-families -->\n).*?(<!-- /upcycle-families -->)", re.S)


def table() -> str:
    from dus.plan.moe_family import FAMILIES, REFUSED

    rows = [
        "| dense `model_type` | MoE (transformers) | per-expert tensors of layer N | copy is exact because | "
        "the dense config must have |",
        "|---|---|---|---|---|",
    ]
    for dense, f in FAMILIES.items():
        names = "/".join(f.expert_names)
        why = "top-k weights always renormalised" if f.norm_topk == "always" else "`norm_topk_prob: true` written"
        if f.shared:
            why += f"; shared expert (`{f.shared}`) down projection zero"
        must = ", ".join(f"`{k}: {str(v).lower()}`" for k, v in f.must) or "—"
        rows.append(
            f"| `{dense}` | `{f.target}` ({f.architecture}) | `{f.block}.experts.E.{{{names}}}.weight`, "
            f"router `{f.block}.{f.router}.weight` | {why} | {must} |"
        )
    rows += ["", "| dense `model_type` | refused because |", "|---|---|"]
    rows += [f"| `{dense}` | {reason} |" for dense, reason in REFUSED.items()]
    return "\n".join(rows)


def updated(text: str) -> str:
    return TABLE.sub(lambda m: f"{m[1]}{table()}\n{m[2]}", text)


def main(argv: list[str]) -> int:
    text = PAGE.read_text(encoding="utf-8")
    if "--check" in argv:
        if updated(text) != text:
            print(f"{PAGE}: family table out of date; run python scripts/upcycle_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(updated(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
