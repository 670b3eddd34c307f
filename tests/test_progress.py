"""Long steps say what they will do before doing it, then show a bar with the time left (issue 25, item 6)."""

import io
import re

from instruct_fixtures import tiny_model_dir
from rich.console import Console

from dus.bars import CountBar


def test_eval_perplexity_says_tokens_and_windows_first(tmp_path, run_dus):
    text = tmp_path / "t.txt"
    text.write_text("what colour is the apple in paris today the apple in paris is red " * 8)
    code, out, err = run_dus("eval", tiny_model_dir(), "--perplexity", text, "--window", "32", "--device", "cpu")
    assert code == 0, err
    said = re.search(
        rf"perplexity of {re.escape(tiny_model_dir())} on {re.escape(str(text))} \(528 characters\): "
        r"([\d,]+) tokens in (\d+) windows of 32",
        err,
    )
    assert said and int(said[1].replace(",", "")) == int(said[2]) * 32, err
    assert out.startswith("perplexity ")


def test_pretrain_says_what_it_reads_before_it_tokenizes(tiny_model, corpus, tmp_path, run_dus):
    code, out, err = run_dus(
        "pretrain",
        tiny_model,
        "--data",
        corpus["train"],
        "--output",
        tmp_path / "r",
        "--max-steps",
        "1",
        "--warmup-steps",
        "1",
        "--seq-len",
        "64",
        "--batch-size",
        "2",
        "--save-every",
        "0",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0, err
    lines = out.splitlines()
    size = corpus["train"].stat().st_size
    assert re.fullmatch(
        rf"pretrain {re.escape(str(tiny_model))} \(4 layers\): tokenizing 1 data file\(s\), "
        rf"{size / 1e3:.1f} kB, into 64-token blocks, then loading the model",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("pretraining ") and lines[1].endswith("128 tokens/step (128 tokens)")
    from huggingface_hub import ModelCard  # the exported model's card: a finetune of its parent (item 9)

    card = ModelCard.load(tmp_path / "r" / "README.md")
    assert card.data.base_model == [tiny_model.name] and card.data.base_model_relation == "finetune"


def test_the_bar_shows_done_of_total_and_the_time_left():
    screen = io.StringIO()
    with CountBar("perplexity", 3, console=Console(file=screen, force_terminal=True, width=100)) as bar:
        for _ in range(3):
            bar.advance()
        bar.progress.refresh()
        shown = screen.getvalue()
    assert "perplexity" in shown and "3/3" in shown and "left" in shown and re.search(r"\d:\d\d:\d\d", shown)


def test_no_bar_without_a_terminal():
    screen = io.StringIO()
    with CountBar("training", 5, console=Console(file=screen, force_terminal=False)) as bar:
        bar.advance()
    assert bar.progress is None and screen.getvalue() == ""
