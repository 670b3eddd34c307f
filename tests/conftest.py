import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
