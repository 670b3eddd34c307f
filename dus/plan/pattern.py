"""Notice when a build leaves an architecture's periodic attention pattern.

The output config lists every layer's attention kind (`layer_types`), so
transformers runs the model as planned. Downstream converters may not read
that list: llama.cpp's convert_hf_to_gguf.py writes no per-layer pattern for
Gemma-2/3 and the like, and llama.cpp then falls back to the family's period
(every 6th layer full, ...). A grown stack that breaks the period converts into
a different model there, so the build says so (not an error: the safetensors
output itself is exact).
"""

from __future__ import annotations

GGUF_HINT = "grow the GGUF instead (`dus build SRC.gguf OUT.gguf`, see docs/gguf.md)"


def period(types: list) -> int:
    """The shortest p with types[i] == types[i % p] for every i (len(types) when none repeats)."""
    n = len(types)
    return next(p for p in range(1, n + 1) if all(types[i] == types[i % p] for i in range(n)))


def broken_pattern_note(source_config: dict, output_config: dict) -> str | None:
    """One line when the output's `layer_types` no longer follows the source's repeating pattern."""
    source, output = source_config.get("layer_types"), output_config.get("layer_types")
    if not isinstance(source, list) or not isinstance(output, list) or not source:
        return None
    p = period(source)
    if p == len(source) or all(kind == source[i % p] for i, kind in enumerate(output)):
        return None  # no repeating pattern to break, or the output still repeats it
    off = [i for i, kind in enumerate(output) if kind != source[i % p]]
    return (
        f"layer_types no longer repeats the source's {p}-layer pattern (output layers {_short(off)} differ from "
        f"it): converters that assume the period, such as llama.cpp's convert_hf_to_gguf.py, would give "
        f"those layers the wrong attention; {GGUF_HINT}"
    )


def _short(indices: list[int], shown: int = 6) -> str:
    text = ", ".join(map(str, indices[:shown]))
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")
