"""`dus eval --tasks`: lm-evaluation-harness runs, read the leaderboard way.

One `simple_evaluate` call per distinct shot count, all on one loaded model.
A task that is a group (mmlu) is scored as the plain mean of its leaf tasks:
lm-eval's own group score weights by size, the leaderboard's did not.
lm-eval is an optional extra (`pip install 'dus[eval]'`); task data comes from
the Hub or, offline, from local task YAMLs under `--include-path`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dus.errors import InputError
from dus.eval.h6 import BY_NAME, H6, Benchmark

AUTO_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mc2")


@dataclass
class Score:
    task: str
    shots: int | None
    metric: str
    value: float
    subtasks: dict[str, float] = field(default_factory=dict)  # leaf scores of a group


@dataclass
class Report:
    model: str
    scores: list[Score]

    @property
    def average(self) -> float:
        return sum(s.value for s in self.scores) / len(self.scores) if self.scores else float("nan")

    def is_h6(self) -> bool:
        return sorted(s.task for s in self.scores) == sorted(b.task for b in H6)


def lm_eval_modules():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise InputError("dus eval --tasks needs lm-evaluation-harness: pip install 'dus[eval]'") from e
    return lm_eval, HFLM, TaskManager


def parse_tasks(spec: str, num_fewshot: int | None = None, metric: str | None = None) -> list[Benchmark]:
    """"h6" and/or comma-separated task names. H6 tasks keep the leaderboard's shots and metric."""
    out: list[Benchmark] = []
    for name in (n.strip() for n in spec.split(",")):
        if not name:
            continue
        if name.lower() == "h6":
            out += [b for b in H6 if b not in out]
        elif name in BY_NAME:
            out.append(BY_NAME[name])
        else:
            m, _, flt = (metric or "auto").partition(",")
            out.append(Benchmark(name, num_fewshot, m, flt or "none"))
    if not out:
        raise InputError("no tasks given")
    return out


def task_manager(names: list[str], include_path: str | None):
    """Index only the local tasks when they hold every name: the full index takes seconds to build."""
    _, _, TaskManager = lm_eval_modules()
    if include_path:
        if not Path(include_path).is_dir():
            raise InputError(f"{include_path}: not a directory of task YAMLs")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise InputError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return manager


def leaves(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    if name not in group_subtasks:
        return [name]
    return [leaf for child in group_subtasks[name] for leaf in leaves(child, group_subtasks)]


def pick_metric(result: dict, bench: Benchmark) -> str:
    if bench.metric != "auto":
        return bench.key
    for m in AUTO_METRICS:
        for key in result:
            if key.split(",")[0] == m:
                return key
    raise InputError(f"{bench.task}: no metric among {', '.join(AUTO_METRICS)}; pass --metric")


def read_score(bench: Benchmark, out: dict) -> Score:
    """The benchmark's score from one simple_evaluate output; groups as an unweighted mean of leaves."""
    results, groups = out["results"], out.get("group_subtasks", {})
    names = leaves(bench.task, groups)
    key = pick_metric(results[names[0]], bench)
    missing = [n for n in names if key not in results.get(n, {})]
    if missing:
        raise InputError(f"{bench.task}: metric {key!r} missing for {', '.join(missing)}")
    values = {n: float(results[n][key]) for n in names}
    shots = out.get("n-shot", {}).get(names[0], bench.shots)
    return Score(bench.task, shots, key, sum(values.values()) / len(values), values if bench.task in groups else {})


def evaluate(model: str, benchmarks: list[Benchmark], include_path: str | None = None, device: str = "auto",
             dtype: str = "auto", batch_size: int | str = "auto", limit: int | None = None, seed: int = 0) -> Report:
    lm_eval, HFLM, _ = lm_eval_modules()
    from dus.instruct.load import check_model, resolve_device, resolve_dtype

    check_model(model)
    manager = task_manager([b.task for b in benchmarks], include_path)
    device = resolve_device(device)
    lm = HFLM(pretrained=model, device=device, dtype=resolve_dtype(dtype, device), batch_size=batch_size)
    by_shots: dict[int | None, list[Benchmark]] = {}
    for b in benchmarks:
        by_shots.setdefault(b.shots, []).append(b)
    scores: dict[str, Score] = {}
    for shots, group in by_shots.items():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[b.task for b in group], num_fewshot=shots, task_manager=manager, limit=limit,
            log_samples=False, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
        if out is None:  # a non-zero rank under accelerate launch
            continue
        for b in group:
            scores[b.task] = read_score(b, out)
    return Report(model, [scores[b.task] for b in benchmarks if b.task in scores])


def markdown(report: Report) -> str:
    rows = ["| task | shots | metric | score |", "|---|---:|---|---:|"]
    for s in report.scores:
        shots = "" if s.shots is None else s.shots
        rows.append(f"| {s.task} | {shots} | {s.metric} | {100 * s.value:.2f} |")
    label = "H6 average" if report.is_h6() else "average"
    rows.append(f"| **{label}** | | | **{100 * report.average:.2f}** |")
    return "\n".join(rows)


def write(report: Report, out_dir: str) -> None:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    data = {"model": report.model, "average": report.average, "h6": report.is_h6(),
            "scores": [asdict(s) for s in report.scores]}
    (path / "results.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (path / "results.md").write_text(markdown(report) + "\n", encoding="utf-8")
