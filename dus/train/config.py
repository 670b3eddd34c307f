"""Continued-pretraining configuration: one dataclass filled from YAML and CLI flags.

Every field is both a YAML key (dashes or underscores) and a `dus pretrain`
flag; the CLI builds its options from `fields()` and their `help` metadata, so
the two never drift. Precedence: dataclass default < --config file < CLI flag.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from dus.errors import InputError
from dus.runtime import device_name, dtype_name
from dus.yamlfile import read_mapping


def _opt(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PretrainConfig:
    model: str = _opt("", "input model directory (e.g. the output of `dus build`)", positional=True)
    data: list[str] = _opt([], "training text: .txt, .jsonl/.json (a `text` field), .parquet, or a directory of them; repeatable")
    output: str = _opt("", "run directory: metrics, checkpoints, and the final Hugging Face model")
    # data
    eval_data: list[str] = _opt([], "held-out text for eval loss/perplexity; repeatable")
    eval_fraction: float = _opt(0.0, "hold out this fraction of the packed training blocks for eval instead")
    eval_every: int = _opt(500, "evaluate every N steps (also before the first and after the last step)")
    eval_batches: int = _opt(50, "at most this many eval batches per rank")
    text_field: str = _opt("text", "JSONL/Parquet column holding the document text")
    streaming: bool = _opt(False, "stream the corpus instead of tokenizing it all up front (larger than RAM/disk cache)")
    shuffle_buffer: int = _opt(0, "streaming only: shuffle buffer in blocks (0 keeps --resume exact)")
    cache_dir: str = _opt("", "datasets cache for tokenized corpora (default: the Hugging Face cache)")
    num_proc: int = _opt(1, "processes for tokenizing a non-streaming corpus")
    # shape of the run
    seq_len: int = _opt(2048, "tokens per packed training block")
    batch_size: int = _opt(8, "blocks per device per micro-batch")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    max_steps: int = _opt(0, "optimizer steps (0: from --max-tokens, else one epoch)")
    max_tokens: int = _opt(0, "stop after this many training tokens, all ranks together")
    stop_after: int = _opt(0, "leave after this step with a checkpoint (resume later); the schedule still spans --max-steps")
    # optimizer and schedule
    lr: float = _opt(5e-5, "peak learning rate (AdamW); cosine decay after linear warmup")
    min_lr_ratio: float = _opt(0.1, "final learning rate as a fraction of --lr")
    warmup_steps: int = _opt(100, "linear warmup steps")
    weight_decay: float = _opt(0.1, "AdamW weight decay on matrices (not norms or biases)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the global gradient norm (0: no clipping)")
    # precision and speed
    device: str = _opt("auto", "auto (CUDA when present), cuda, or cpu")
    dtype: str = _opt("auto", "compute dtype: bfloat16, float32, or auto (bfloat16 on GPU, float32 on CPU)")
    grad_checkpointing: bool = _opt(False, "recompute each decoder layer in backward to save activation memory")
    compile: bool = _opt(False, "torch.compile each decoder layer")
    freeze: str = _opt("none", "none | original (train only layers dus_plan.json marks new) | layers:SPEC (e.g. layers:0:4,7)")
    # bookkeeping
    seed: int = _opt(0, "seed for data order and any randomness in the model")
    save_every: int = _opt(1000, "checkpoint every N steps and at the end (0: only when --stop-after leaves early)")
    final_checkpoint: bool = _opt(True, "checkpoint after the last step too (model and optimizer, to continue later); "
                                        "--no-final-checkpoint leaves only the exported model")
    keep_checkpoints: int = _opt(2, "keep this many newest checkpoints (0: all)")
    resume: bool = _opt(False, "continue from the newest checkpoint in OUTPUT/checkpoints")
    log_every: int = _opt(10, "print and record metrics every N steps")
    log_samples: bool = _opt(False, "record a hash of every block each rank trains on (OUTPUT/samples-rankR.jsonl)")
    tensorboard: bool = _opt(False, "also write TensorBoard events to OUTPUT/tensorboard")

    @classmethod
    def from_dict(cls, values: dict, source: str = "options") -> PretrainConfig:
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise InputError(f"unknown option {key!r} in {source}")
            kwargs[name] = _coerce(name, hints[name], value, source)
        return cls(**kwargs).validate()

    def validate(self) -> PretrainConfig:
        # The Python API may pass Paths or a single path; run.json and messages want strings.
        self.data, self.eval_data = ([str(x) for x in ([v] if isinstance(v, (str, Path)) else v)]
                                     for v in (self.data, self.eval_data))
        self.model, self.output, self.cache_dir = str(self.model), str(self.output), str(self.cache_dir)
        for name in ("model", "output"):
            if not getattr(self, name):
                raise InputError(f"no {name} given (pass it on the command line or as `{name}:` in --config)")
        if not self.data:
            raise InputError("no training data given: pass --data PATH")
        for name in ("seq_len", "batch_size", "grad_accum", "log_every", "eval_every",
                     "eval_batches", "num_proc"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "max_tokens", "stop_after", "warmup_steps", "save_every", "keep_checkpoints",
                     "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InputError("--lr must be positive and --min-lr-ratio within 0..1")
        self.device, self.dtype = device_name(self.device), dtype_name(self.dtype)
        if self.dtype == "float16":
            raise InputError("--dtype float16 cannot train without loss scaling: use bfloat16 or float32")
        if not 0 <= self.eval_fraction < 1:
            raise InputError("--eval-fraction must be in [0, 1)")
        if self.eval_fraction and self.eval_data:
            raise InputError("give --eval-data or --eval-fraction, not both")
        if self.streaming and self.eval_fraction:
            raise InputError("--eval-fraction needs a non-streaming corpus; pass --eval-data with --streaming")
        if self.streaming and not (self.max_steps or self.max_tokens):
            raise InputError("--streaming needs --max-steps or --max-tokens (a stream has no epoch length)")
        if not (self.freeze in ("none", "original") or self.freeze.startswith("layers:")):
            raise InputError(f"--freeze must be none, original or layers:SPEC, not {self.freeze!r}")
        return self

    def total_steps(self, world: int, steps_per_epoch: int | None) -> int:
        """Optimizer steps of the whole schedule: the tighter of --max-steps and --max-tokens, else one epoch."""
        limits = [self.max_steps] if self.max_steps else []
        if self.max_tokens:
            limits.append(math.ceil(self.max_tokens / (self.seq_len * self.batch_size * self.grad_accum * world)))
        if not limits and steps_per_epoch is not None:
            limits.append(steps_per_epoch)
        if not limits or min(limits) < 1:
            raise InputError("the corpus is too small for one optimizer step: lower --batch-size, --grad-accum or --seq-len")
        return min(limits)


def _coerce(name: str, hint, value, source: str):
    """YAML gives strings for '3e-5' and scalars for one-item lists; accept both."""
    try:
        if hint == list[str]:
            return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if hint is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if hint is int:
            number = float(value)
            if number != int(number):
                raise ValueError("expected an integer")
            return int(number)
        if hint is float:
            return float(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad value {value!r} for {name!r} in {source}: {e}") from None


def load_config(path: str | Path | None, overrides: dict) -> PretrainConfig:
    """The YAML file's keys, then every override that is not None (the CLI flags given)."""
    values: dict = {}
    if path:
        loaded = read_mapping(path)
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        source = str(path)
    else:
        source = "options"
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PretrainConfig.from_dict(values, source)


def default_of(f) -> object:
    return f.default_factory() if f.default is MISSING else f.default
