"""`dus eval --tasks`: lm-evaluation-harness runs, read the leaderboard way.

Before any model is loaded: finished scores in --output are reused, every
task is checked to exist, to have its data at hand (offline.py), and, when
local, to hold H6's fixed shot count. Then one `simple_evaluate` call per
task, all on one loaded model, with the results rewritten after each task.
A task that is a group (mmlu) is scored as the plain mean of its leaf tasks:
lm-eval's own group score weights by size, the leaderboard's did not.
lm-eval is an optional extra (`pip install 'dus[eval]'`); task data comes from
the Hub or, offline, from local task YAMLs under `--include-path`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError
from dus.eval.h6 import BY_NAME, H6, Benchmark
from dus.eval.offline import check_hub, dataset_paths, is_local
from dus.eval.results import Report, Score, finished, reusable, write
from dus.quiet import quiet_lm_eval

AUTO_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mc2")


@dataclass
class Plan:
    """What is left to evaluate after reusing finished scores, and the task index to load it from."""

    todo: list[Benchmark]
    manager: object


def lm_eval_modules():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise InputError("dus eval --tasks needs lm-evaluation-harness: pip install 'dus[eval]'") from e
    quiet_lm_eval()
    return lm_eval, HFLM, TaskManager


def parse_tasks(spec: str, num_fewshot: int | None = None, metric: str | None = None) -> list[Benchmark]:
    """ "h6" and/or comma-separated task names. H6 tasks keep the leaderboard's shots and metric."""
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


def read_score(bench: Benchmark, out: dict, limit: int | None = None) -> Score:
    """The benchmark's score from one simple_evaluate output; groups as an unweighted mean of leaves."""
    results, groups = out["results"], out.get("group_subtasks", {})
    names = leaves(bench.task, groups)
    key = pick_metric(results[names[0]], bench)
    missing = [n for n in names if key not in results.get(n, {})]
    if missing:
        raise InputError(f"{bench.task}: metric {key!r} missing for {', '.join(missing)}")
    values = {n: float(results[n][key]) for n in names}
    shots = out.get("n-shot", {}).get(names[0], bench.shots)
    return Score(
        bench.task, shots, key, sum(values.values()) / len(values), values if bench.task in groups else {}, limit
    )


def check_shots(benchmarks: list[Benchmark], manager) -> None:
    """A local task's few-shot split must hold the shots H6 fixes (one more when it is the test split)."""
    for b in benchmarks:
        if not b.shots or not all(is_local(p) for p in dataset_paths(b.task, manager.task_index)):
            continue
        try:
            loaded = manager.load([b.task])["tasks"]
        except (OSError, ValueError) as e:  # a missing or unreadable data file, a bad YAML
            raise InputError(f"{b.task}: cannot load the local task: {e}") from e
        for name, task in loaded.items():
            split = task.fewshot_cfg.split
            need = b.shots + (split == task.config.test_split)
            pool = task.fewshot_docs()
            have = 0 if pool is None else len(pool)
            if have < need:
                raise InputError(
                    f"{name}: {b.shots}-shot evaluation needs {need} few-shot examples but its few-shot split "
                    f"{split or '(default)'} has {have}; add examples to it (the shots are fixed for {b.task})"
                )


def prepare(
    report: Report, benchmarks: list[Benchmark], include_path: str | None = None, output: str | None = None
) -> Plan:
    """Reuse finished scores, then check the rest can run (tasks known, data reachable, shots available)."""
    from dus.runtime import check_weights

    check_weights(report.model)  # HFLM loads it: a pickle-only directory is refused first
    done = finished(output, report) if output else {}
    todo = [b for b in benchmarks if not reusable(done.get(b.task), b)]
    report.scores = [done[b.task] for b in benchmarks if b not in todo]
    if report.scores:
        print(
            f"reusing {len(report.scores)} finished task(s) from {Path(output) / 'results.json'}: "
            f"{', '.join(s.task for s in report.scores)}",
            file=sys.stderr,
        )
    if not todo:
        return Plan([], None)
    manager = task_manager([b.task for b in todo], include_path)
    check_hub(report.model, [b.task for b in todo], manager.task_index)
    check_shots(todo, manager)
    return Plan(todo, manager)


def evaluate(
    report: Report,
    benchmarks: list[Benchmark],
    plan: Plan,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | str = "auto",
    output: str | None = None,
) -> Report:
    """One simple_evaluate call per task on one loaded model; OUTPUT's files are rewritten after each."""
    if not plan.todo:
        return report
    lm_eval, HFLM, _ = lm_eval_modules()
    from dus.runtime import resolve_device, resolve_dtype

    device = resolve_device(device)
    lm = HFLM(pretrained=report.model, device=device, dtype=resolve_dtype(dtype, device), batch_size=batch_size)
    scores, seed = {s.task: s for s in report.scores}, report.seed
    for b in plan.todo:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[b.task],
            num_fewshot=b.shots,
            task_manager=plan.manager,
            limit=report.limit,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        if out is None:  # a non-zero rank under accelerate launch
            continue
        scores[b.task] = read_score(b, out, report.limit)
        report.scores = [scores[x.task] for x in benchmarks if x.task in scores]
        if output:
            write(report, output)
    return report
