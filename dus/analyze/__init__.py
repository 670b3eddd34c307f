"""Layer analysis for depth up-scaling: which layers matter, how far apart they are, where to put the seam.

    from dus.analyze import analyze
    result = analyze("path/to/model", text, max_tokens=4096, target_layers=44, output="out/")

data.py: text -> token windows; measure.py: hidden states -> influence and distances;
recommend.py: distances + budget -> overlap m; plot.py: the PNGs; run.py: all of it.
docs/analyze.md explains the metrics and the seam indexing.
"""

import importlib

# Loaded on first use, as one block: `dus --help` reads AnalyzeOptions from this package without
# importing torch. Loading all three at once keeps `dus.analyze.measure` the function, not the module.
_EXPORTS = {
    "measure": ("angular", "hidden_states", "measure"),
    "recommend": ("dus_sizes", "explain", "recommend_overlap"),
    "run": ("analyze", "summary", "write"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'dus.analyze' has no attribute {name!r}")
    for module, names in _EXPORTS.items():
        loaded = importlib.import_module(f"dus.analyze.{module}")
        globals().update({n: getattr(loaded, n) for n in names})
    return globals()[name]
