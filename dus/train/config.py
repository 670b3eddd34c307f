"""Continued-pretraining configuration: one dataclass filled from YAML and CLI flags.

Every field is both a YAML key (dashes or underscores) and a `dus pretrain`
flag (dus/options.py); the CLI and docs/pretrain.md's table are built from
`fields()`, so they never drift. Precedence: dataclass default < --config file < CLI flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError
from dus.options import from_mapping, load, option
from dus.runtime import device_name, dtype_name


@dataclass
class PretrainConfig:
    model: str = option(
        "", "input model directory (e.g. the output of `dus build`)", positional=True, metavar="MODEL_DIR"
    )
    data: list[str] = option(
        [], "training text: .txt, .jsonl/.json (a `text` field), .parquet, or a directory of them; repeatable"
    )
    output: str = option("", "run directory: metrics, checkpoints, and the final Hugging Face model")
    # data
    eval_data: list[str] = option([], "held-out text for eval loss/perplexity; repeatable")
    eval_fraction: float = option(0.0, "hold out this fraction of the packed training blocks for eval instead")
    eval_every: int = option(500, "evaluate every N steps (also before the first and after the last step)")
    eval_batches: int = option(50, "at most this many eval batches per rank")
    text_field: str = option("text", "JSONL/Parquet column holding the document text")
    streaming: bool = option(
        False, "stream the corpus instead of tokenizing it all up front (larger than RAM/disk cache)"
    )
    shuffle_buffer: int = option(0, "streaming only: shuffle buffer in blocks (0 keeps --resume exact)")
    cache_dir: str = option("", "datasets cache for tokenized corpora (default: the Hugging Face cache)")
    num_proc: int = option(1, "processes for tokenizing a non-streaming corpus")
    # shape of the run
    seq_len: int = option(2048, "tokens per packed training block (at most the model's max_position_embeddings)")
    batch_size: int = option(8, "blocks per device per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_steps: int = option(0, "optimizer steps (0: from --max-tokens, else one epoch)")
    max_tokens: int = option(0, "stop after this many training tokens, all ranks together")
    stop_after: int = option(
        0, "leave after this step with a checkpoint (resume later); the schedule still spans --max-steps"
    )
    # optimizer and schedule
    lr: float = option(5e-5, "peak learning rate (AdamW); cosine decay after linear warmup")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    warmup_steps: int = option(100, "linear warmup steps")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not norms or biases)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm (0: no clipping)")
    # precision and speed
    device: str = option("auto", "auto (CUDA when present), cuda, or cpu")
    dtype: str = option("auto", "compute dtype: bfloat16, float32, or auto (bfloat16 on GPU, float32 on CPU)")
    grad_checkpointing: bool = option(False, "recompute each decoder layer in backward to save activation memory")
    compile: bool = option(False, "torch.compile each decoder layer")
    freeze: str = option(
        "none",
        "none, original (train only the layers dus_plan.json marks new; on a widened model "
        "only the added width), layers:SPEC (e.g. layers:0:4,7), or for a mixture of "
        "experts router or experts (train only those)",
    )
    router_aux_loss_coef: float | None = option(
        None,
        "mixture of experts: weight of the router's load-balancing loss "
        "in the training loss (0: off) [default: the model config's]",
    )
    # bookkeeping
    seed: int = option(0, "seed for data order and any randomness in the model")
    save_every: int = option(1000, "checkpoint every N steps and at the end (0: only when --stop-after leaves early)")
    export_dtype: str = option(
        "auto",
        "dtype of the exported model: auto (the input model's), bfloat16, float16 "
        "or float32 (keeps updates below bfloat16's resolution)",
    )
    final_checkpoint: bool = option(
        True,
        "checkpoint after the last step too (model and optimizer, to continue later); "
        "--no-final-checkpoint leaves only the exported model",
    )
    keep_checkpoints: int = option(2, "keep this many newest checkpoints (0: all)")
    resume: bool = option(False, "continue from the newest checkpoint in OUTPUT/checkpoints")
    log_every: int = option(10, "print and record metrics every N steps")
    log_samples: bool = option(False, "record a hash of every block each rank trains on (OUTPUT/samples-rankR.jsonl)")
    tensorboard: bool = option(False, "also write TensorBoard events to OUTPUT/tensorboard")

    @classmethod
    def from_dict(cls, values: dict, source: str = "options") -> PretrainConfig:
        return from_mapping(cls, values, source).validate()

    def validate(self) -> PretrainConfig:
        # The Python API may pass Paths or a single path; run.json and messages want strings.
        self.data, self.eval_data = (
            [str(x) for x in ([v] if isinstance(v, (str, Path)) else v)] for v in (self.data, self.eval_data)
        )
        self.model, self.output, self.cache_dir = str(self.model), str(self.output), str(self.cache_dir)
        for name in ("model", "output"):
            if not getattr(self, name):
                raise InputError(f"no {name} given (pass it on the command line or as `{name}:` in --config)")
        if not self.data:
            raise InputError("no training data given: pass --data PATH")
        for name in ("seq_len", "batch_size", "grad_accum", "log_every", "eval_every", "eval_batches", "num_proc"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        for name in (
            "max_steps",
            "max_tokens",
            "stop_after",
            "warmup_steps",
            "save_every",
            "keep_checkpoints",
            "shuffle_buffer",
        ):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InputError("--lr must be positive and --min-lr-ratio within 0..1")
        self.device, self.dtype = device_name(self.device), dtype_name(self.dtype)
        self.export_dtype = dtype_name(self.export_dtype)
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
        if not (self.freeze in ("none", "original", "router", "experts") or self.freeze.startswith("layers:")):
            raise InputError(f"--freeze must be none, original, layers:SPEC, router or experts, not {self.freeze!r}")
        return self

    def total_steps(self, world: int, steps_per_epoch: int | None) -> int:
        """Optimizer steps of the whole schedule: the tighter of --max-steps and --max-tokens, else one epoch."""
        limits = [self.max_steps] if self.max_steps else []
        if self.max_tokens:
            limits.append(math.ceil(self.max_tokens / (self.seq_len * self.batch_size * self.grad_accum * world)))
        if not limits and steps_per_epoch is not None:
            limits.append(steps_per_epoch)
        if not limits or min(limits) < 1:
            raise InputError(
                "the corpus is too small for one optimizer step: lower --batch-size, --grad-accum or --seq-len"
            )
        return min(limits)


def load_config(path: str | Path | None, overrides: dict) -> PretrainConfig:
    """The YAML file's keys, then every override that is not None (the CLI flags given)."""
    return load(PretrainConfig, path, overrides).validate()
