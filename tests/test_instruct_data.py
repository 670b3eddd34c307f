"""SFT/DPO data: formats rendered through the chat template, task and n-gram hygiene."""

import pytest
from instruct_fixtures import write_jsonl

from dus.errors import InputError
from dus.instruct.data import dpo_text, load_rows, sft_text, to_text
from dus.instruct.hygiene import benchmark_ngrams, clean, ngrams


def test_chat_becomes_prompt_and_reply(tok):
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    assert sft_text(row, tok) == {"prompt": "### System:\nS\n\n### User:\nQ\n\n### Assistant:\n", "completion": "A"}
    conv = {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}
    assert sft_text(conv, tok) == {"prompt": "### User:\nQ\n\n### Assistant:\n", "completion": "A"}
    assert sft_text({"prompt": "raw ", "completion": "text"}, tok) == {"prompt": "raw ", "completion": "text"}
    with pytest.raises(InputError):
        sft_text({"messages": [{"role": "user", "content": "Q"}]}, tok)


def test_preference_pairs(tok):
    user, good, bad = (
        [{"role": "user", "content": "Q"}],
        {"role": "assistant", "content": "G"},
        {"role": "assistant", "content": "B"},
    )
    expected = {"prompt": "### User:\nQ\n\n### Assistant:\n", "chosen": "G", "rejected": "B"}
    assert dpo_text({"prompt": user, "chosen": [good], "rejected": [bad]}, tok) == expected
    assert dpo_text({"chosen": user + [good], "rejected": user + [bad]}, tok) == expected
    assert dpo_text({"prompt": "p", "chosen": "c", "rejected": "r"}, tok) == {
        "prompt": "p",
        "chosen": "c",
        "rejected": "r",
    }


def test_unknown_format_and_files(tok, tmp_path):
    rows = load_rows([write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])])
    with pytest.raises(InputError, match="expected one of"):
        to_text(rows, tok, "sft")
    with pytest.raises(InputError):
        load_rows([str(tmp_path / "missing.jsonl")])


BENCH = "the quick brown fox jumps over the lazy dog near the old river bank at dawn"


def test_hygiene_counts(tmp_path):
    rows = [
        {"text": "an ordinary example about apples and rivers", "task": "cot_gsm8k"},
        {"text": "keep me, I am fine", "task": "flan_qa"},
        {"text": f"prefix words then {BENCH.upper()}!", "task": "niv_story"},  # overlaps despite case/punctuation
        {"text": "only the quick brown fox jumps over the lazy dog", "task": "t0_x"},  # 9 words: too short for 13
        {"text": "gsm8k-free text", "task": "arc_challenge"},
    ]
    data = load_rows([write_jsonl(tmp_path / "train.jsonl", rows)])
    (tmp_path / "tasks.txt").write_text("# benchmark tasks\n*gsm8k*\narc_challenge\n")
    write_jsonl(tmp_path / "bench.jsonl", [{"question": BENCH, "choices": ["a", "b"], "answer": 0}])
    kept, report = clean(data, str(tmp_path / "tasks.txt"), None, [str(tmp_path / "bench.jsonl")], 13)
    assert (report.total, report.by_task, report.by_ngram, report.kept) == (5, 2, 1, 2)
    assert sorted(kept["task"]) == ["flan_qa", "t0_x"]
    assert "dropped 2 by task filter, 1 by n-gram overlap, 2 kept" in report.line()
    _, report8 = clean(data, None, None, [str(tmp_path / "bench.jsonl")], 8)
    assert report8.by_ngram == 2


def test_ngrams_normalise_words():
    assert ngrams("A, b; C!", 2) == {("a", "b"), ("b", "c")}
    assert benchmark_ngrams([], 13) == set()


def test_task_filter_needs_a_task_column(tmp_path):
    data = load_rows([write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])])
    (tmp_path / "tasks.txt").write_text("a\n")
    with pytest.raises(InputError, match="task column"):
        clean(data, str(tmp_path / "tasks.txt"))
