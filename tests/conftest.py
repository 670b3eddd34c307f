import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remembered plan checks (dus/checks/cache.py) go to a folder of this run's own, not ~/.cache.
os.environ["DUS_CHECK_CACHE"] = tempfile.mkdtemp(prefix="dus-test-cache-")
atexit.register(shutil.rmtree, os.environ["DUS_CHECK_CACHE"], True)
# Tiny models on a 2-core machine: one thread is far faster than two threads
# fighting other processes for the cores (measured ~20x per training step).
torch.set_num_threads(1)


@pytest.fixture
def run_dus(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from dus.cli import main

    def run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A saved 4-layer LLaMA with its BPE, trained on nothing (the `dus pretrain` tests' source)."""
    from pretrain_helpers import make_model

    return make_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """JSONL corpora of Python's help topics: most to train on, every eighth held out."""
    from pretrain_helpers import TOPICS, write_corpus

    root = tmp_path_factory.mktemp("corpus")
    return {
        "train": write_corpus(root / "train", [t for i, t in enumerate(TOPICS) if i % 8]),
        "eval": write_corpus(root / "eval", [t for i, t in enumerate(TOPICS) if i % 8 == 0]),
    }


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory) -> Path:
    """A saved tiny random LLaMA (tests/models.py), one per test module: tests copy it before changing it."""
    from models import save_model

    directory = tmp_path_factory.mktemp("llama") / "src"
    save_model("llama", directory)
    return directory


@pytest.fixture(scope="module")
def tok():
    """The instruct tests' tokenizer (tests/instruct_fixtures.py) with the SOLAR chat template."""
    from instruct_fixtures import make_tokenizer

    from dus.instruct.template import set_chat_template

    tokenizer = make_tokenizer()
    set_chat_template(tokenizer, "solar")
    return tokenizer


def _fetched(name: str) -> Path:
    """A SmolLM2-135M-Instruct download from dus.testing.fetch (cached); the test is skipped offline."""
    from dus.testing import fetch

    try:
        return getattr(fetch, name)()
    except fetch.DownloadError as e:  # offline and not cached: nothing to test against
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face model directory (bfloat16 safetensors, tokenizer, chat template)."""
    return _fetched("fetch_smollm2")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The same model's original Q4_1 GGUF file."""
    return _fetched("fetch_smollm2_gguf")
