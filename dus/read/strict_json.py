"""JSON from untrusted files, parsed as strictly as serde_json parses it.

The safetensors library reads headers with Rust's serde_json; transformers reads
config.json with Python's json, which also accepts NaN, Infinity, numbers no
float can hold, lone UTF-16 surrogates and nesting that ends in RecursionError.
`loads` refuses all of those the way serde_json does, and one thing serde_json
lets through: a key repeated in an object, which JSON parsers resolve
differently, so two readers of one file could see two different models.
Every refusal is one InputError line naming the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate

from dus.errors import InputError

MAX_DEPTH = 127  # serde_json's recursion limit: 128 nested arrays/objects fail
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)  # a string (closed or not) or a bracket
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _Invalid:
    """Left by a parse hook where a value is refused; `loads` reports its path."""

    def __init__(self, problem: str):
        self.problem = problem


def loads(raw: bytes, where: str):
    """Parse a file's bytes, or raise InputError(f"{where}: ...") naming the field at fault."""
    try:
        data = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (bad byte at offset {e.start})") from None
    if _depth(data) > MAX_DEPTH:
        raise InputError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
    refused = []

    def refuse(problem: str) -> _Invalid:
        refused.append(problem)
        return _Invalid(problem)

    def real(text: str):
        value = float(text)
        return value if math.isfinite(value) else refuse(f"is {_cut(text)}, out of the range of a 64-bit float")

    def integer(text: str):
        # serde_json reads -0 as a float (so no shape or offset) and refuses what no float holds.
        value = real(text)
        return value if text == "-0" or isinstance(value, _Invalid) else int(text)

    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                return refuse(f"has the key {brief(key)} twice")
            seen.add(key)
        return dict(pairs)

    try:
        value = json.loads(
            data,
            object_pairs_hook=unique,
            parse_int=integer,
            parse_float=real,
            parse_constant=lambda name: refuse(f"is {name}: JSON has no such value"),
        )
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON ({e})") from None
    if refused or "\\u" in data:  # only \u escapes can make a lone surrogate
        _check_values(value, where)
    return value


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings, found without recursion."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    steps = (_STEP[t] for t in _TOKEN.findall(text) if t in _STEP)
    return max(accumulate(steps), default=0)


def _check_values(value, where: str) -> None:
    """Raise for the first refused value or string that is not valid Unicode."""
    stack = [(value, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Invalid):
            raise InputError(f"{where}: {_field(path)} {value.problem}")
        if isinstance(value, str) and not _is_unicode(value):
            raise InputError(
                f"{where}: {_field(path)} holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    raise InputError(
                        f"{where}: key {brief(key)} in {_field(path)} holds a lone UTF-16 surrogate, not valid Unicode"
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(path: tuple) -> str:
    """A readable field path: rope_scaling.factor, 'model.embed.weight'.shape[0]."""
    if not path:
        return "the top level"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if part.isidentifier() else brief(part))
    return f"field {out}"


def brief(value) -> str:
    """repr of a value from an untrusted file, cut short enough for one error line."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"
