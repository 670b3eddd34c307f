"""Tiny offline models and data for the instruct/eval tests (imported by tests/test_instruct*.py etc.).

A byte-level BPE tokenizer trained on toy text and a 2-layer Llama (the shared factories in
tests/models.py): everything is made on the spot, nothing is downloaded.
"""

from __future__ import annotations

import atexit
import functools
import json
import random
import shutil
import tempfile
from pathlib import Path

import torch
from models import bpe_tokenizer, tiny_llama

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "river", "stone", "cloud", "horse", "table", "garden", "window", "bridge", "candle"]
PLACES = ["paris", "rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito"]


def facts(n: int, seed: int = 0) -> list[dict]:
    """Short question/answer pairs of toy words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing, colour, place = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(PLACES)
        out.append(
            {
                "question": f"what colour is the {thing} in {place} today",
                "answer": f"the {thing} in {place} is {colour} and {rng.choice(COLOURS)}",
            }
        )
    return out


def corpus() -> list[str]:
    lines = [f"{q['question']} {q['answer']}" for q in facts(200, seed=99)]
    lines += ["### System:\n", "### User:\n", "### Assistant:\n", "question answer choice true false yes no"]
    return lines


def make_tokenizer():
    """A 400-token BPE over every byte, EOS id 0, BOS prepended."""
    return bpe_tokenizer(corpus(), 400, {"eos_token": "</s>", "bos_token": "<s>", "pad_token": "<pad>"}, all_bytes=True)


def make_model(tokenizer, seed: int = 0):
    return tiny_llama(tokenizer, 2, seed, max_position_embeddings=2048)


def save(model, tokenizer, directory) -> str:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@functools.cache
def _root() -> Path:
    root = tempfile.mkdtemp(prefix="dus-instruct-tests-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # shared across test files, gone with the process
    return Path(root)


@functools.cache
def tiny_model_dir(seed: int = 0) -> str:
    """A saved random tiny model (no chat template), built once per test process."""
    tokenizer = make_tokenizer()
    return save(make_model(tokenizer, seed), tokenizer, _root() / f"tiny-{seed}")


def overfit(model, tokenizer, texts: list[str], steps: int = 150, lr: float = 3e-3):
    """Train on `texts` until memorised: the contaminated model of the contamination test."""
    batch = tokenizer([t for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def write_jsonl(path, rows) -> str:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
