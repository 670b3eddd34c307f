"""Layer analysis for depth up-scaling: which layers matter, how far apart they are, where to put the seam.

    from dus.analyze import analyze
    result = analyze("path/to/model", text, max_tokens=4096, target_layers=44, output="out/")

data.py: text -> token windows; measure.py: hidden states -> influence and distances;
recommend.py: distances + budget -> overlap m; plot.py: the PNGs; run.py: all of it.
docs/analyze.md explains the metrics and the seam indexing.
"""

from dus.analyze.measure import angular, hidden_states, measure
from dus.analyze.recommend import dus_sizes, explain, recommend_overlap
from dus.analyze.run import analyze, summary, write

__all__ = ["analyze", "angular", "dus_sizes", "explain", "hidden_states", "measure", "recommend_overlap",
           "summary", "write"]
