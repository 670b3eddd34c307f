"""`dus eval --perplexity` and `dus chat` read .gguf files through transformers' `gguf_file=` (issue 25,
item 12): a grown GGUF is checked without llama.cpp, and it scores what an in-memory DUS of the source does."""

from __future__ import annotations

import re

import pytest
import torch
from models import reference_model

import dus.api
from dus.eval.perplexity import reference_text

SMOLLM2_DUS8 = list(range(22)) + list(range(8, 30))  # what --overlap 8 plans


def test_other_commands_name_what_reads_a_gguf(tmp_path, run_dus):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    text = tmp_path / "t.txt"
    text.write_text("some words")
    code, _, err = run_dus("analyze", gguf, "--text", text)
    assert code == 2 and err == (
        f"error: {gguf}: a .gguf file; this command reads a model directory "
        "(`dus eval --perplexity` and `dus chat` read .gguf files)\n"
    )
    split = tmp_path / "grown-00001-of-00003.gguf"
    split.write_bytes(b"GGUF")
    code, _, err = run_dus("chat", split, "-p", "hi")
    assert code == 2 and "one file of a split GGUF set: transformers reads a single .gguf file" in err
    code, _, err = run_dus("chat", tmp_path / "absent.gguf", "-p", "hi")
    assert code == 2 and err == f"error: {tmp_path / 'absent.gguf'}: does not exist\n"


@pytest.mark.slow
@pytest.mark.real_model
def test_a_grown_gguf_scores_like_the_in_memory_dus_of_its_source(smollm2_gguf, tmp_path, run_dus, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    grown = tmp_path / "grown.gguf"
    dus.api.build(str(smollm2_gguf), grown, overlap=8)
    text = tmp_path / "t.txt"
    text.write_text(reference_text(6000))
    code, out, err = run_dus(
        "eval",
        grown,
        "--perplexity",
        text,
        "--max-tokens",
        "1024",
        "--window",
        "256",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    )
    assert code == 0, err
    got = float(re.search(r"perplexity ([\d.]+) \(nll", out)[1])

    source = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    from dus.eval.perplexity import perplexity

    want = perplexity(
        reference_model(source, SMOLLM2_DUS8).eval(), tokenizer, text.read_text(), max_tokens=1024, window=256
    )["perplexity"]
    assert abs(got - want) < 1e-3 * want, (got, want)  # the same de-quantized blocks, in the planned order

    capsys.readouterr()  # the de-quantizer bar of the reference load above, outside any dus command
    code, out, err = run_dus("chat", grown, "-p", "What is 2+2?", "--max-new-tokens", "8", "--device", "cpu")
    assert code == 0 and out.strip() and "de-quantizing" not in err, err
