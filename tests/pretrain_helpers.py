"""Offline fixtures for the `dus pretrain` tests: a tiny BPE tokenizer and Llama model trained on nothing,
and corpora of real English from Python's own help topics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from safetensors.torch import load_file

TOPICS = [topics[k] for k in sorted(topics)]


def write_corpus(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)))
    return path


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TOPICS, trainers.BpeTrainer(vocab_size=384, special_tokens=["<unk>", "<eos>"],
                                                         show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def make_model(directory: Path, layers: int = 4, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(directory)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Most topics to train on, every eighth held out."""
    root = tmp_path_factory.mktemp("corpus")
    return {"train": write_corpus(root / "train", [t for i, t in enumerate(TOPICS) if i % 8]),
            "eval": write_corpus(root / "eval", [t for i, t in enumerate(TOPICS) if i % 8 == 0])}


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
