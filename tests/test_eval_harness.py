"""`dus eval`: lm-eval on tiny local task files, the leaderboard's shots, MMLU unweighted, the H6 average.

The tasks are miniatures named like the H6 ones. Every multiple-choice item has
identical choices, so any model ties them and lm-eval picks the first: accuracy
is then fixed by the gold index (0: right, 1: wrong), whatever the model.
"""

import json

import pytest
import yaml
from instruct_fixtures import tiny_model_dir, write_jsonl

from dus.errors import InputError
from dus.eval import harness
from dus.eval.h6 import H6

MC = {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
      "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
      "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                      {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}


def _docs(n: int, gold: int) -> list[dict]:
    return [{"question": f"what colour is the apple {i}", "choices": ["red", "red"], "answer": gold} for i in range(n)]


def _task(d, name: str, test: list[dict], config: dict, pool: list[dict] | None = None):
    """A task YAML over local JSONL files; `pool` (30 items by default) serves the few-shot examples."""
    files = {"train": write_jsonl(d / f"{name}_train.jsonl", pool or _docs(30, 0)),
             "test": write_jsonl(d / f"{name}_test.jsonl", test)}
    body = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
            "training_split": "train", "fewshot_split": "train", "test_split": "test", **config}
    (d / f"{name}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    _task(d, "arc_challenge", _docs(2, 0), MC)  # 1.0
    _task(d, "hellaswag", _docs(2, 1), MC)  # 0.0
    _task(d, "truthfulqa_mc2", _docs(2, 0), MC)  # 1.0
    _task(d, "winogrande", _docs(2, 1), MC)  # 0.0
    _task(d, "mmlu_small", _docs(1, 0), MC)  # 1 item, 1.0
    _task(d, "mmlu_large", _docs(3, 1), MC)  # 3 items, 0.0: unweighted 0.5, weighted 0.25
    (d / "mmlu.yaml").write_text(yaml.safe_dump({
        "group": "mmlu", "task": ["mmlu_small", "mmlu_large"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 1}}))
    gsm = [{"question": "one plus two", "answer": "#### 3"}]
    _task(d, "gsm8k", gsm, {
        "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 6},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "filter_list": [{"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                                           {"function": "take_first"}]}]},
          pool=[{"question": f"{i} plus 0", "answer": f"#### {i}"} for i in range(30)])
    return d


def test_h6_end_to_end(tasks, tmp_path, run_dus, monkeypatch):
    import lm_eval

    shots_seen = []
    real = lm_eval.simple_evaluate

    def spy(*args, **kwargs):
        shots_seen.append(kwargs["num_fewshot"])
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    code, out, err = run_dus("eval", tiny_model_dir(), "--tasks", "h6", "--include-path", tasks, "--batch-size", "1",
                             "--device", "cpu", "--output", tmp_path / "out")
    assert code == 0, err
    assert sorted(shots_seen) == [0, 5, 10, 25]  # one harness call per distinct shot count
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    scores = {s["task"]: s for s in result["scores"]}
    assert {t: s["shots"] for t, s in scores.items()} == {b.task: b.shots for b in H6}
    assert {t: s["metric"] for t, s in scores.items()} == {b.task: b.key for b in H6}
    assert {t: s["value"] for t, s in scores.items()} == {
        "arc_challenge": 1.0, "hellaswag": 0.0, "mmlu": 0.5, "truthfulqa_mc2": 1.0, "winogrande": 0.0, "gsm8k": 0.0}
    assert scores["mmlu"]["subtasks"] == {"mmlu_small": 1.0, "mmlu_large": 0.0}
    assert result["h6"] and result["average"] == pytest.approx(2.5 / 6)
    assert "H6 average" in out and "41.67" in out
    assert "41.67" in (tmp_path / "out" / "results.md").read_text()


def test_group_is_unweighted_where_lm_eval_weights(tasks):
    import lm_eval

    manager = harness.task_manager(["mmlu"], str(tasks))
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": tiny_model_dir(), "device": "cpu"},
                                  tasks=["mmlu"], num_fewshot=0, task_manager=manager, bootstrap_iters=0,
                                  log_samples=False, batch_size=1)
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
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        lambda include_path=None, **_: local_only(include_path=include_path, include_defaults=False))
    code, _, err = run_dus("eval", tiny_model_dir(), "--tasks", "nope", "--include-path", tasks)
    assert code == 2 and "unknown lm-eval task" in err
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    code, _, err = run_dus("eval", tiny_model_dir(), "--tasks", "h6")
    assert code == 2 and "pip install 'dus[eval]'" in err
    code, _, err = run_dus("eval", tiny_model_dir())
    assert code == 2


def test_perplexity_option(tmp_path, run_dus):
    pytest.importorskip("dus.eval.perplexity")
    text = tmp_path / "t.txt"
    text.write_text("what colour is the apple in paris today the apple in paris is red " * 8)
    code, out, err = run_dus("eval", tiny_model_dir(), "--perplexity", text, "--window", "32", "--device", "cpu",
                             "--output", tmp_path / "o")
    assert code == 0, err
    assert out.startswith("perplexity ")
    assert json.loads((tmp_path / "o" / "perplexity.json").read_text())["tokens"] > 0


def test_reference_text_selects_topics():
    from pydoc_data.topics import topics

    from dus.eval.perplexity import reference_text

    keys = sorted(topics)
    assert reference_text(topics=[keys[3], keys[1]]) == topics[keys[1]].strip() + "\n\n" + topics[keys[3]].strip()
    assert reference_text().startswith(reference_text(topics=keys[:2]))
    assert reference_text(max_chars=100, topics=keys[5:]) == reference_text(topics=keys[5:])[:100]
