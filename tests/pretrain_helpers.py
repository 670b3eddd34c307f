"""Offline helpers for the `dus pretrain` tests: a tiny LLaMA with a BPE trained on real English (Python's
own help topics), corpora of those topics, and an independent perplexity. The fixtures are in conftest.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import torch
from models import bpe_tokenizer, tiny_llama
from safetensors.torch import load_file

TOPICS = [topics[k] for k in sorted(topics)]


def write_corpus(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)))
    return path


def make_model(directory: Path, layers: int = 4, seed: int = 0) -> Path:
    """A tiny LLaMA and its BPE (384 tokens, no BOS) trained on the topics, saved in `directory`."""
    tokenizer = bpe_tokenizer(TOPICS, 384, {"unk_token": "<unk>", "eos_token": "<eos>"})
    tokenizer.save_pretrained(directory)
    tiny_llama(tokenizer, layers, seed, max_position_embeddings=128).save_pretrained(directory)
    return directory


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def perplexity(model_dir: Path, text_path: Path, seq_len: int = 64, blocks: int = 32) -> float:
    """Mean next-token loss on the first blocks of a JSONL corpus, computed independently of dus.train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = []
    for record in read_jsonl(text_path):
        ids += tokenizer(record["text"])["input_ids"] + [tokenizer.eos_token_id]
    batch = torch.tensor(ids[: seq_len * blocks]).view(blocks, seq_len)
    with torch.no_grad():
        return math.exp(model(input_ids=batch, labels=batch).loss.item())


def run_config(model, corpus: dict, output, cache, /, **options) -> dict:
    """A small `dus pretrain` config: the training corpus, 64-token sequences, batches of 4, a log line a step;
    `options` override any of it (model= too)."""
    return {
        "model": str(model),
        "data": [str(corpus["train"])],
        "output": str(output),
        "seq_len": 64,
        "batch_size": 4,
        "log_every": 1,
        "cache_dir": str(cache),
        **options,
    }


FAST_SCHEDULE = {"lr": 3e-3, "warmup_steps": 2}  # what a tiny model learns from in a few steps


def torchrun_pretrain(model, corpus: dict, output, cache, *flags: str) -> list[str]:
    """`dus pretrain` on two CPU ranks under torchrun (gloo), 64-token sequences, batches of 4: its command."""
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "dus", "pretrain", str(model), "--device", "cpu", "--data", str(corpus["train"])),
        *("--output", str(output), "--seq-len", "64", "--batch-size", "4", "--cache-dir", str(cache)),
        *flags,
    ]


def run_ranks(cmd: list[str]) -> subprocess.CompletedProcess:
    """A torchrun command, one thread a rank (two ranks share this machine's cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
