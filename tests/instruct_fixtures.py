"""Tiny offline models and data for the instruct/eval tests (imported by tests/test_instruct*.py etc.).

A byte-level BPE tokenizer trained here on toy text, and a 2-layer Llama built
from its config class: everything is made on the spot, nothing is downloaded.
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

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "river", "stone", "cloud", "horse", "table", "garden", "window", "bridge", "candle"]
PLACES = ["paris", "rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito"]


def facts(n: int, seed: int = 0) -> list[dict]:
    """Short question/answer pairs of toy words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing, colour, place = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(PLACES)
        out.append({"question": f"what colour is the {thing} in {place} today",
                    "answer": f"the {thing} in {place} is {colour} and {rng.choice(COLOURS)}"})
    return out


def corpus() -> list[str]:
    lines = [f"{q['question']} {q['answer']}" for q in facts(200, seed=99)]
    lines += ["### System:\n", "### User:\n", "### Assistant:\n", "question answer choice true false yes no"]
    return lines


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>", "<s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def save(model, tokenizer, directory) -> str:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@functools.lru_cache(maxsize=None)
def _root() -> Path:
    root = tempfile.mkdtemp(prefix="dus-instruct-tests-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # shared across test files, gone with the process
    return Path(root)


@functools.lru_cache(maxsize=None)
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
