"""`dus eval --output DIR`: results.md and results.json, rewritten after every task.

A run killed half-way leaves the finished tasks' scores on disk, and a rerun
into the same DIR takes them back instead of evaluating again, but only when
they were measured the same way: same model files, same --limit and --seed,
same shots and metric. Scores of a --limit run are marked as not comparable
with full-benchmark scores, in both files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dus.core.publish import atomic_write_text
from dus.eval.h6 import H6, Benchmark

MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "tokenizer*")


@dataclass
class Score:
    task: str
    shots: int | None
    metric: str
    value: float
    subtasks: dict[str, float] = field(default_factory=dict)  # leaf scores of a group
    limit: int | None = None  # at most this many examples were scored


@dataclass
class Report:
    model: str
    scores: list[Score] = field(default_factory=list)
    limit: int | None = None
    seed: int = 0
    fingerprint: str | None = None  # of the model's files; None for a Hub id
    perplexity: dict | None = None  # `--perplexity`: {"data", "perplexity", "nll", "tokens", ...}

    @property
    def average(self) -> float | None:
        return sum(s.value for s in self.scores) / len(self.scores) if self.scores else None

    @property
    def comparable(self) -> bool:
        """False when any score saw only --limit examples: a smoke test, not a benchmark result."""
        return all(s.limit is None for s in self.scores)

    def is_h6(self) -> bool:
        return sorted(s.task for s in self.scores) == sorted(b.task for b in H6)


def model_fingerprint(model: str) -> str | None:
    """Names, sizes and times of a local model's weights, config and tokenizer: a retrained model reads as new."""
    path = Path(model).expanduser()
    if not path.exists():
        return None
    files = (
        [path]
        if path.is_file()
        else sorted(  # a .gguf is one file
            {f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file()}
        )
    )
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def to_json(report: Report) -> dict:
    return {
        "model": report.model,
        "model_fingerprint": report.fingerprint,
        "limit": report.limit,
        "seed": report.seed,
        "comparable": report.comparable,
        "average": report.average,
        "h6": report.is_h6(),
        "scores": [asdict(s) for s in report.scores],
        "perplexity": report.perplexity,
    }


LIMIT_MARK = "†"


def markdown(report: Report) -> str:
    lines = []
    if report.scores:
        lines += ["| task | shots | metric | score |", "|---|---:|---|---:|"]
        for s in report.scores:
            shots = "" if s.shots is None else s.shots
            lines.append(f"| {s.task} | {shots} | {s.metric} | {100 * s.value:.2f}{LIMIT_MARK if s.limit else ''} |")
        label = "H6 average" if report.is_h6() else "average"
        mark = "" if report.comparable else LIMIT_MARK
        lines.append(f"| **{label}** | | | **{100 * report.average:.2f}**{mark} |")
        if not report.comparable:
            lines += [
                "",
                f"{LIMIT_MARK} --limit {report.limit}: at most {report.limit} examples per task, a smoke "
                "test; not comparable with full-benchmark scores.",
            ]
    if report.perplexity:
        p = report.perplexity
        lines += [""] if lines else []
        lines.append(f"perplexity {p['perplexity']:.4f} (nll {p['nll']:.4f}, {p['tokens']} tokens) on {p['data']}")
    return "\n".join(lines)


def write(report: Report, out_dir: str | Path) -> None:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "results.json", json.dumps(to_json(report), indent=2) + "\n")
    atomic_write_text(path / "results.md", markdown(report) + "\n")


def finished(out_dir: str | Path, report: Report) -> dict[str, Score]:
    """Scores in OUT_DIR/results.json measured on the same model files with the same --limit and --seed."""
    try:
        data = json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
        same = all(
            data.get(k) == v
            for k, v in (
                ("model", report.model),
                ("model_fingerprint", report.fingerprint),
                ("limit", report.limit),
                ("seed", report.seed),
            )
        )
        return {s["task"]: Score(**s) for s in data["scores"]} if same else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no file, or not one of ours
        return {}


def reusable(score: Score | None, bench: Benchmark) -> bool:
    """A finished score of this benchmark, at its shots and (when fixed) its metric."""
    if score is None:
        return False
    return (bench.shots is None or score.shots == bench.shots) and (bench.metric == "auto" or score.metric == bench.key)
