"""`dus eval`: lm-eval on tiny local task files, the leaderboard's shots, MMLU unweighted, the H6 average.

The tasks are miniatures named like the H6 ones. Every multiple-choice item has
identical choices, so any model ties them and lm-eval picks the first: accuracy
is then fixed by the gold index (0: right, 1: wrong), whatever the model.
"""

import json

import pytest
import yaml
from instruct_fixtures import tiny_model_dir, write_jsonl
from refusal import assert_refused

from dus.errors import BuildError, InputError
from dus.eval import harness
from dus.eval.h6 import H6
from dus.pipeline.tinydata import MC  # the task layout the tiny recipe writes


def _docs(n: int, gold: int) -> list[dict]:
    return [{"question": f"what colour is the apple {i}", "choices": ["red", "red"], "answer": gold} for i in range(n)]


def _task(d, name: str, test: list[dict], config: dict, pool: list[dict] | None = None):
    """A task YAML over local JSONL files; `pool` (30 items by default) serves the few-shot examples."""
    files = {
        "train": write_jsonl(d / f"{name}_train.jsonl", pool or _docs(30, 0)),
        "test": write_jsonl(d / f"{name}_test.jsonl", test),
    }
    body = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "test",
        **config,
    }
    (d / f"{name}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    tiny_model_dir()  # made (once) here, so its progress bar is not in a command's captured output
    _task(d, "arc_challenge", _docs(2, 0), MC)  # 1.0
    _task(d, "hellaswag", _docs(2, 1), MC)  # 0.0
    _task(d, "truthfulqa_mc2", _docs(2, 0), MC)  # 1.0
    _task(d, "winogrande", _docs(2, 1), MC)  # 0.0
    _task(d, "mmlu_small", _docs(1, 0), MC)  # 1 item, 1.0
    _task(d, "mmlu_large", _docs(3, 1), MC)  # 3 items, 0.0: unweighted 0.5, weighted 0.25
    (d / "mmlu.yaml").write_text(
        yaml.safe_dump(
            {
                "group": "mmlu",
                "task": ["mmlu_small", "mmlu_large"],
                "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
                "metadata": {"version": 1},
            }
        )
    )
    gsm = [{"question": "one plus two", "answer": "#### 3"}]
    _task(
        d,
        "gsm8k",
        gsm,
        {
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 6},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "filter_list": [
                {
                    "name": "strict-match",
                    "filter": [
                        {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                        {"function": "take_first"},
                    ],
                }
            ],
        },
        pool=[{"question": f"{i} plus 0", "answer": f"#### {i}"} for i in range(30)],
    )
    return d


def _spy_harness(monkeypatch) -> list[tuple[str, int | None]]:
    """Record every simple_evaluate call as (task, shots)."""
    import lm_eval

    calls = []
    real = lm_eval.simple_evaluate

    def spy(*args, **kwargs):
        calls.append((kwargs["tasks"][0], kwargs["num_fewshot"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    return calls


def _eval(run_dus, tasks_dir, out, *extra, tasks="h6"):
    return run_dus(
        "eval",
        tiny_model_dir(),
        "--tasks",
        tasks,
        "--include-path",
        tasks_dir,
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--output",
        out,
        *extra,
    )


def test_h6_end_to_end(tasks, tmp_path, run_dus, monkeypatch):
    calls = _spy_harness(monkeypatch)
    code, out, err = _eval(run_dus, tasks, tmp_path / "out")
    assert code == 0, err
    assert calls == [(b.task, b.shots) for b in H6]  # one harness call per task, the leaderboard's shots
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    scores = {s["task"]: s for s in result["scores"]}
    assert {t: s["shots"] for t, s in scores.items()} == {b.task: b.shots for b in H6}
    assert {t: s["metric"] for t, s in scores.items()} == {b.task: b.key for b in H6}
    assert {t: s["value"] for t, s in scores.items()} == {
        "arc_challenge": 1.0,
        "hellaswag": 0.0,
        "mmlu": 0.5,
        "truthfulqa_mc2": 1.0,
        "winogrande": 0.0,
        "gsm8k": 0.0,
    }
    assert scores["mmlu"]["subtasks"] == {"mmlu_small": 1.0, "mmlu_large": 0.0}
    assert result["h6"] and result["average"] == pytest.approx(2.5 / 6)
    assert result["limit"] is None and result["comparable"] is True
    assert "H6 average" in out and "41.67" in out
    assert "41.67" in (tmp_path / "out" / "results.md").read_text()
    # quiet by default: no progress bars, no lm-eval chatter
    assert "\r" not in err and "it/s" not in err and "Overwriting default num_fewshot" not in err, err

    calls.clear()  # rerun into the same --output: every task is finished
    code, out2, err = _eval(run_dus, tasks, tmp_path / "out")
    assert code == 0 and calls == [] and "reusing 6 finished task(s)" in err
    assert out2 == out and json.loads((tmp_path / "out" / "results.json").read_text()) == result


def test_scores_written_after_each_task_and_reused(tasks, tmp_path, run_dus, monkeypatch):
    """A run that dies at the last task keeps the others; the rerun evaluates only that task."""
    import lm_eval

    calls = _spy_harness(monkeypatch)
    spy = lm_eval.simple_evaluate

    def dies_at_gsm8k(*args, **kwargs):
        if kwargs["tasks"] == ["gsm8k"]:
            raise RuntimeError("CUDA out of memory")
        return spy(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", dies_at_gsm8k)
    code, _, err = _eval(run_dus, tasks, tmp_path / "out")
    assert code == 1 and "CUDA out of memory" in err
    partial = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["task"] for s in partial["scores"]] == [b.task for b in H6[:5]] and not partial["h6"]
    assert "| winogrande |" in (tmp_path / "out" / "results.md").read_text()

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    calls.clear()
    code, out, err = _eval(run_dus, tasks, tmp_path / "out")
    assert code == 0, err
    assert calls == [("gsm8k", 5)] and "reusing 5 finished task(s)" in err
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["h6"] and result["average"] == pytest.approx(2.5 / 6) and "41.67" in out


def test_limit_is_recorded_and_marked(tasks, tmp_path, run_dus, monkeypatch):
    calls = _spy_harness(monkeypatch)
    code, out, err = _eval(run_dus, tasks, tmp_path / "out", "--limit", "1", tasks="arc_challenge,hellaswag")
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["limit"] == 1 and result["comparable"] is False
    assert [s["limit"] for s in result["scores"]] == [1, 1]
    md = (tmp_path / "out" / "results.md").read_text()
    assert (
        "| 100.00† |" in md
        and "**50.00**†" in md
        and "--limit 1" in md
        and "not comparable" in md
        and "not comparable" in out
    )

    calls.clear()  # a full run into the same directory does not take the smoke scores
    code, out, err = _eval(run_dus, tasks, tmp_path / "out", tasks="arc_challenge,hellaswag")
    assert code == 0 and len(calls) == 2
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["limit"] is None and result["comparable"] is True
    assert "not comparable" not in (tmp_path / "out" / "results.md").read_text() and "†" not in out


def test_few_shot_split_too_small_fails_before_loading(tmp_path, run_dus, monkeypatch):
    import lm_eval.models.huggingface

    monkeypatch.setattr(lm_eval.models.huggingface, "HFLM", None)  # loading the model would fail differently
    _task(tmp_path, "arc_challenge", _docs(2, 0), MC, pool=_docs(10, 0))
    code, _, err = _eval(run_dus, tmp_path, tmp_path / "out", tasks="arc_challenge")
    assert_refused(
        code, err, "arc_challenge: 25-shot evaluation needs 25 few-shot examples", "has 10", outputs=tmp_path / "out"
    )


@pytest.fixture
def offline_index(tasks, tmp_path, monkeypatch):
    """lm-eval's built-in tasks replaced by one Hub task (gsm8k on openai/gsm8k); an empty Hugging Face cache.

    Returns a task directory holding every H6 task but gsm8k, as a user who has five of them locally.
    """
    import datasets.config
    import huggingface_hub.constants
    import lm_eval.tasks

    builtin = tmp_path / "builtin"
    builtin.mkdir()
    (builtin / "gsm8k.yaml").write_text(
        yaml.safe_dump({"task": "gsm8k", "dataset_path": "openai/gsm8k", "dataset_name": "main", "test_split": "test"})
    )
    real = lm_eval.tasks.TaskManager

    def manager(include_path=None, include_defaults=True, **_):
        paths = ([builtin] if include_defaults else []) + ([include_path] if include_path else [])
        return real(include_path=paths, include_defaults=False)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", manager)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    local = tmp_path / "local"
    local.mkdir()
    for f in tasks.iterdir():
        if not f.name.startswith("gsm8k"):
            (local / f.name).write_bytes(f.read_bytes())
    return local


def test_offline_hub_task_stops_before_loading(offline_index, tmp_path, run_dus, monkeypatch):
    import lm_eval.models.huggingface

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(lm_eval.models.huggingface, "HFLM", None)
    code, out, err = _eval(run_dus, offline_index, tmp_path / "out")
    assert_refused(
        code,
        err,
        "offline (HF_HUB_OFFLINE is set)",
        "gsm8k need",
        "openai/gsm8k",
        "--include-path",
        "docs/pipeline/eval.md",
        exit_code=1,
    )
    assert "Retry" not in err
    assert "arc_challenge" not in err  # the local ones are not blamed


def test_offline_local_tasks_still_run(offline_index, tmp_path, run_dus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _eval(run_dus, offline_index, tmp_path / "out", tasks="arc_challenge,mmlu")
    assert code == 0, err
    assert "| mmlu | 5 | acc,none | 50.00 |" in out


def test_hub_probe_and_cache(offline_index, tmp_path, monkeypatch):
    """Without the variables one failed connection says offline; a cached dataset is then used offline."""
    import socket

    import datasets.config
    import huggingface_hub.constants

    from dus.eval import offline

    for name in offline.OFFLINE_VARIABLES:
        monkeypatch.setenv(name, "0")  # also undone after go_offline() sets them
    probes = []

    def refused(address, timeout):
        probes.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://huggingface.co")
    assert offline.hub_offline() == "cannot reach huggingface.co: Name or service not known"
    assert probes == [(("huggingface.co", 443), offline.PROBE_SECONDS)]
    manager = harness.task_manager(["gsm8k"], None)
    with pytest.raises(BuildError, match="cannot reach huggingface.co"):
        offline.check_hub(tiny_model_dir(), ["gsm8k"], manager.task_index)

    (tmp_path / "hub" / "datasets--openai--gsm8k").mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # go_offline() sets them; undone after the test
        monkeypatch.setattr(datasets.config, name, getattr(datasets.config, name))
    offline.check_hub(tiny_model_dir(), ["gsm8k"], manager.task_index)  # cached: runs from the cache
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True

    probes.clear()  # all tasks local: the network is not asked
    local = harness.task_manager(["arc_challenge", "mmlu"], str(offline_index))
    offline.check_hub(tiny_model_dir(), ["arc_challenge", "mmlu"], local.task_index)
    assert probes == []


def test_group_is_unweighted_where_lm_eval_weights(tasks):
    import lm_eval

    manager = harness.task_manager(["mmlu"], str(tasks))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": tiny_model_dir(), "device": "cpu"},
        tasks=["mmlu"],
        num_fewshot=0,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=False,
        batch_size=1,
    )
    lm_eval_group = out.get("groups", out["results"])["mmlu"]["acc,none"]
    ours = harness.read_score(harness.parse_tasks("mmlu")[0], out)
    assert lm_eval_group == pytest.approx(0.25) and ours.value == pytest.approx(0.5)


def test_task_parsing():
    assert [b.task for b in harness.parse_tasks("h6")] == [b.task for b in H6]
    custom = harness.parse_tasks("arc_challenge,my_task", num_fewshot=3, metric="exact_match,strict-match")
    assert custom[0] == H6[0]
    assert (custom[1].shots, custom[1].key) == (3, "exact_match,strict-match")
    with pytest.raises(InputError):
        harness.parse_tasks(" , ")


def test_unknown_local_task_and_missing_extra(tasks, run_dus, monkeypatch):
    import lm_eval.tasks

    local_only = lm_eval.tasks.TaskManager  # the full index takes ~15 s to build; the error path is the same
    monkeypatch.setattr(
        lm_eval.tasks,
        "TaskManager",
        lambda include_path=None, **_: local_only(include_path=include_path, include_defaults=False),
    )
    code, _, err = run_dus("eval", tiny_model_dir(), "--tasks", "nope", "--include-path", tasks)
    assert code == 2 and "unknown lm-eval task" in err
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    code, _, err = run_dus("eval", tiny_model_dir(), "--tasks", "h6")
    assert code == 2 and "pip install 'dus[eval]'" in err
    code, _, err = run_dus("eval", tiny_model_dir())
    assert code == 2


def test_perplexity_option(tmp_path, run_dus):
    text = tmp_path / "t.txt"
    text.write_text("what colour is the apple in paris today the apple in paris is red " * 8)
    code, out, err = run_dus(
        "eval", tiny_model_dir(), "--perplexity", text, "--window", "32", "--device", "cpu", "--output", tmp_path / "o"
    )
    assert code == 0, err
    assert out.startswith("perplexity ")
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["perplexity"]["tokens"] > 0 and result["perplexity"]["data"] == str(text)
    assert result["scores"] == [] and result["model"] == tiny_model_dir()
    assert (tmp_path / "o" / "results.md").read_text().startswith("perplexity ")
    assert json.loads((tmp_path / "o" / "perplexity.json").read_text())["tokens"] == result["perplexity"]["tokens"]


def test_reference_text_selects_topics():
    from pydoc_data.topics import topics

    from dus.eval.perplexity import reference_text

    keys = sorted(topics)
    assert reference_text(topics=[keys[3], keys[1]]) == topics[keys[1]].strip() + "\n\n" + topics[keys[3]].strip()
    assert reference_text().startswith(reference_text(topics=keys[:2]))
    assert reference_text(max_chars=100, topics=keys[5:]) == reference_text(topics=keys[5:])[:100]
