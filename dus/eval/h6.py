"""H6: the six Open LLM Leaderboard (v1) benchmarks SOLAR reports, and how each is read.

Shot counts and metrics are the leaderboard's. MMLU is the plain mean of its
57 subjects, as the leaderboard averaged them (lm-eval's `mmlu` group weights
subjects by size instead). GSM8K is exact match on the "#### <number>" answer
(lm-eval's strict-match filter). The H6 score is the mean of the six.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    task: str  # lm-eval task or group name
    shots: int | None  # None: the task's own default
    metric: str  # lm-eval metric name
    filter: str = "none"  # lm-eval filter the metric is read under

    @property
    def key(self) -> str:
        return f"{self.metric},{self.filter}"


H6 = (
    Benchmark("arc_challenge", 25, "acc_norm"),
    Benchmark("hellaswag", 10, "acc_norm"),
    Benchmark("mmlu", 5, "acc"),
    Benchmark("truthfulqa_mc2", 0, "acc"),  # lm-eval reports mc2 under "acc"
    Benchmark("winogrande", 5, "acc"),
    Benchmark("gsm8k", 5, "exact_match", "strict-match"),
)
BY_NAME = {b.task: b for b in H6}
