"""A Hub repo id as SOURCE, served from a locally populated Hugging Face cache (offline)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from models import save_model
from refusal import assert_refused

REPO = "dus-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _populate_cache(tmp_path):
    save_model("llama", tmp_path / "model")
    (tmp_path / "model/tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (tmp_path / "model/pytorch_model.bin").write_bytes(b"pickle that must never be read")
    repo = tmp_path / "hub" / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(tmp_path / "model", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(COMMIT)
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "home"),
    }


def _dus(env, *args):
    return subprocess.run([sys.executable, "-m", "dus", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.mark.slow  # ~20 s
def test_plan_and_build_from_repo_id(tmp_path):
    env = _populate_cache(tmp_path)
    plan = _dus(env, "plan", REPO, "--overlap", "1", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["num_layers"] == 6
    build = _dus(env, "build", REPO, tmp_path / "out", "--overlap", "1", "--verify")
    assert build.returncode == 0, build.stderr
    record = json.loads((tmp_path / "out/dus_plan.json").read_text())
    assert record["sources"]["base"] == {
        "ref": REPO,
        "revision": COMMIT,
        "num_layers": 4,
        "layer_prefix": "model.layers.",
    }
    assert (tmp_path / "out/tokenizer_config.json").is_file()
    assert not (tmp_path / "out/pytorch_model.bin").exists()
    card = (tmp_path / "out/README.md").read_text()
    assert f"base_model:\n- {REPO}" in card and "library_name: transformers" in card


def test_unknown_repo_offline_is_one_line(tmp_path):
    env = _populate_cache(tmp_path)
    result = _dus(env, "build", "nobody/nothing", tmp_path / "out")
    line = assert_refused(result.returncode, result.stderr, outputs=tmp_path / "out")
    assert line.startswith("error: nobody/nothing: cannot get it")
