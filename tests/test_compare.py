"""`dus compare BASE GROWN...` (issue 25, item 11): perplexity on a text and a greedy reply, side by side,
as a table or `--json`; each row what `dus eval --perplexity` and `dus chat` give for that model alone."""

from __future__ import annotations

import json
import re

import pytest
from instruct_fixtures import tiny_model_dir

import dus.api


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tiny_model_dir()
    grown = tmp_path_factory.mktemp("compare") / "grown"
    dus.api.build(base, grown, overlap=0)
    return base, str(grown)


def test_json_rows_match_eval_and_chat_alone(models, tmp_path, run_dus):
    text = tmp_path / "t.txt"
    text.write_text("what colour is the apple in paris today the apple in paris is red " * 8)
    code, out, err = run_dus(
        "compare", *models, "--text", text, "--window", "32", "--max-new-tokens", "5", "--prompt", "hi", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["text"] == str(text) and result["prompt"] == "hi"
    base, grown = result["models"]
    assert (base["model"], grown["model"]) == models and (grown["layers"], base["layers"]) == (4, 2)
    assert err.splitlines() == [f"measuring {models[0]}", f"measuring {models[1]}"]
    for row in (base, grown):
        code, alone, err = run_dus(
            "eval", row["model"], "--perplexity", text, "--window", "32", "--device", "cpu", "--dtype", "float32"
        )
        assert code == 0, err
        assert f"perplexity {row['perplexity']:.4f} (nll {row['nll']:.4f}, {row['tokens']} tokens)" in alone
        code, reply, err = run_dus(
            "chat", row["model"], "-p", "hi", "--max-new-tokens", "5", "--device", "cpu", "--dtype", "float32"
        )
        assert code == 0 and reply.strip() == row["reply"], (reply, row["reply"])


def test_the_table(models, run_dus):
    code, out, err = run_dus("compare", *models, "--max-tokens", "256", "--window", "64", "--max-new-tokens", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "perplexity on pydoc_data.topics; greedy reply to 'What is the capital of France? Answer in one sentence.'"
    )
    assert lines[2] == "| model | layers | parameters | perplexity | vs base | tokens | reply |"
    assert re.match(rf"\| {re.escape(models[0])} \| 2 \| [\d,]+ \| [\d.]+ \| 1\.00x \| [\d,]+ \| ", lines[4])
    assert re.match(rf"\| {re.escape(models[1])} \| 4 \| [\d,]+ \| [\d.]+ \| [\d.]+x \| [\d,]+ \| ", lines[5])


def test_bad_input_is_one_line(models, tmp_path, run_dus):
    code, _, err = run_dus("compare", models[0])
    assert code == 2
    assert err == "error: give BASE and at least one model to compare with it: dus compare BASE GROWN...\n"
    code, _, err = run_dus("compare", *models, "--text", tmp_path / "none.txt")
    assert code == 2 and err == f"error: {tmp_path / 'none.txt'}: does not exist\n"
    code, _, err = run_dus("compare", models[0], tmp_path / "nothing")
    assert code == 2 and err.endswith(f"error: {tmp_path / 'nothing'}: does not exist\n")
