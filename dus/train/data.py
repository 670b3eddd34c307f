"""Corpus to packed blocks: read with `datasets`, tokenize, add EOS, pack, split across ranks.

Documents are tokenized with the model's tokenizer, each ends with EOS, and the
token stream is cut into fixed `seq_len` blocks with no padding (the tail of
each map batch of 1,000 documents is dropped). A plain-text file is one
document. Non-streaming corpora are tokenized once into the datasets cache
(memory-mapped Arrow); `--streaming` tokenizes on the fly.

Each rank reads a disjoint part: every epoch of a cached corpus is a seeded
permutation whose i-th block goes to rank i % world; a stream is split by
`split_dataset_by_node`. Both loaders keep a small state for exact resume.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import chain, islice

import datasets
import torch
from datasets import Dataset, IterableDataset, concatenate_datasets, load_dataset
from datasets.distributed import split_dataset_by_node

from dus.errors import InputError
from dus.train.config import PretrainConfig
from dus.train.files import resolve_files
from dus.train.parallel import Dist, main_first


def load_documents(paths: list[str], cfg: PretrainConfig) -> Dataset | IterableDataset:
    """One `text` column, whatever the file types."""
    parts = []
    for builder, files in resolve_files(paths).items():
        extra = {"sample_by": "document"} if builder == "text" else {}
        level = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a parse error is reported once, below
        try:
            ds = load_dataset(
                builder,
                data_files=files,
                split="train",
                streaming=cfg.streaming,
                cache_dir=cfg.cache_dir or None,
                **extra,
            )
        except (datasets.exceptions.DatasetGenerationError, ValueError) as e:
            cause = f": {e.__cause__}" if e.__cause__ else ""
            raise InputError(f"cannot read {files[0]}{' and others' if len(files) > 1 else ''}: {e}{cause}") from None
        finally:
            datasets.logging.set_verbosity(level)
        column = "text" if builder == "text" else cfg.text_field
        if ds.column_names is not None and column not in ds.column_names:
            raise InputError(
                f"{files[0]} has no {column!r} field (columns: {', '.join(ds.column_names)}); set --text-field"
            )
        ds = ds.select_columns([column])
        parts.append(ds.rename_column(column, "text") if column != "text" else ds)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def pack(docs: Dataset | IterableDataset, tokenizer, seq_len: int, num_proc: int) -> Dataset | IterableDataset:
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        texts = [t for t in batch["text"] if t]
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
        return {"ids": [x if x and x[-1] == eos else x + [eos] for x in ids]}

    def blocks(batch):
        flat = list(chain.from_iterable(batch["ids"]))
        return {"input_ids": [flat[i : i + seq_len] for i in range(0, len(flat) - seq_len + 1, seq_len)]}

    kw = {} if isinstance(docs, IterableDataset) else {"num_proc": num_proc if num_proc > 1 else None}
    docs = docs.map(tokenize, batched=True, remove_columns=["text"], **kw)
    return docs.map(blocks, batched=True, batch_size=1000, remove_columns=["ids"], **kw)


def block_hash(block: torch.Tensor) -> int:
    return zlib.crc32(block.to(torch.int64).numpy().tobytes())


class BlockLoader:
    """A cached corpus of blocks. Epoch e is randperm(seed + e); rank r takes positions r, r+world, ..."""

    def __init__(self, blocks: Dataset, batch_size: int, d: Dist, seed: int):
        self.blocks, self.batch_size, self.d, self.seed = blocks.with_format("torch"), batch_size, d, seed
        self.batches_per_epoch = len(blocks) // d.world // batch_size
        if self.batches_per_epoch == 0:
            raise InputError(
                f"the corpus has {len(blocks)} blocks, fewer than --batch-size x ranks "
                f"({batch_size} x {d.world}): lower them or --seq-len, or add data"
            )
        self.epoch, self.index, self._order = 0, 0, None

    def order(self) -> torch.Tensor:
        if self._order is None or self._order[0] != self.epoch:
            perm = torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            self._order = (self.epoch, perm[self.d.rank :: self.d.world])
        return self._order[1]

    def next_batch(self) -> torch.Tensor:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.batch_size
        self.index += 1
        return self.blocks[self.order()[start : start + self.batch_size].tolist()]["input_ids"]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]


class StreamLoader:
    """A streamed corpus: this rank's share, cycled epoch after epoch (the step count bounds the run)."""

    def __init__(self, blocks: IterableDataset, batch_size: int, d: Dist, seed: int, shuffle_buffer: int):
        blocks = split_dataset_by_node(blocks, rank=d.rank, world_size=d.world)
        self.ds = blocks.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else blocks
        self.batch_size, self.epoch, self._it, self._fresh = batch_size, 0, None, True

    def _next_block(self) -> list[int]:
        while True:
            if self._it is None:
                self.ds.set_epoch(self.epoch)
                self._it, self._fresh = iter(self.ds), True
            try:
                block = next(self._it)["input_ids"]
                self._fresh = False
                return block
            except StopIteration:
                if self._fresh:
                    raise InputError(
                        "empty corpus: no complete --seq-len block in this rank's share of the stream"
                    ) from None
                self.epoch, self._it = self.epoch + 1, None

    def next_batch(self) -> torch.Tensor:
        return torch.tensor([self._next_block() for _ in range(self.batch_size)])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "stream": self.ds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.ds.set_epoch(self.epoch)
        self.ds.load_state_dict(state["stream"])
        self._it, self._fresh = iter(self.ds), False


@dataclass
class Data:
    train: BlockLoader | StreamLoader
    eval: list[torch.Tensor]  # this rank's eval batches; the same count on every rank
    steps_per_epoch: int | None  # optimizer steps, None for a stream


def build_data(cfg: PretrainConfig, tokenizer, d: Dist) -> Data:
    def prepare():
        train = pack(load_documents(cfg.data, cfg), tokenizer, cfg.seq_len, cfg.num_proc)
        held_out = (
            pack(load_documents(cfg.eval_data, cfg), tokenizer, cfg.seq_len, cfg.num_proc) if cfg.eval_data else None
        )
        return _split(train, cfg.eval_fraction, cfg.seed) if cfg.eval_fraction else (train, held_out)

    train, held_out = main_first(d, prepare)  # rank 0 tokenizes into the cache, the others then read it
    if cfg.streaming:
        loader, steps = StreamLoader(train, cfg.batch_size, d, cfg.seed, cfg.shuffle_buffer), None
    else:
        if len(train) == 0:
            raise InputError(f"empty corpus: no complete {cfg.seq_len}-token block in {', '.join(cfg.data)}")
        loader = BlockLoader(train, cfg.batch_size, d, cfg.seed)
        steps = loader.batches_per_epoch // cfg.grad_accum
    eval_batches = (
        _eval_batches(held_out, cfg.eval_batches * cfg.batch_size * d.world, cfg.batch_size, d) if held_out else []
    )
    return Data(loader, eval_batches, steps)


def _split(blocks: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    if len(blocks) * fraction < 1:
        raise InputError(f"--eval-fraction {fraction} of {len(blocks)} blocks holds out nothing")
    parts = blocks.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _eval_batches(blocks: Dataset | IterableDataset, limit: int, batch_size: int, d: Dist) -> list[torch.Tensor]:
    """The first `limit` blocks, dealt round-robin so every rank runs the same number of batches."""
    rows = [row["input_ids"] for row in islice(iter(blocks), limit)]
    rows = rows[: len(rows) // d.world * d.world]
    if not rows:
        raise InputError("the eval data has fewer complete --seq-len blocks than ranks")
    mine = torch.tensor(rows[d.rank :: d.world])
    return list(mine.split(batch_size))
