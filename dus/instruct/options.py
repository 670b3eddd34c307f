"""What SFT and DPO share: the knobs, the TRL config they map to, data preparation."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from dus.errors import InputError


@dataclass
class TrainOptions:
    model: str  # a local directory (the reference model for DPO is reloaded from it) or a Hub id
    data: list[str]
    output: str
    lr: float = 1e-5
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 1024
    seed: int = 0
    dtype: str = "auto"
    chat_template: str | None = None  # "solar", a .jinja path, or None: the tokenizer's own (SOLAR's if none)
    exclude_tasks: str | None = None
    task_field: str | None = None
    decontaminate: list[str] = field(default_factory=list)
    ngram: int = 13
    warmup: float = 0.0  # steps, or a fraction of the run when below 1
    logging_steps: int = 10
    save_steps: int = 0  # 0: save only the final model
    gradient_checkpointing: bool = True


def config_kwargs(opts: TrainOptions) -> dict:
    """Keyword arguments common to SFTConfig and DPOConfig."""
    import torch

    from dus.instruct.load import resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = resolve_dtype(opts.dtype, device)
    if dtype == torch.float16:
        raise InputError("train in bfloat16 or float32; float16 weights cannot be trained with these optimizers")
    return dict(
        output_dir=opts.output,
        learning_rate=opts.lr,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        max_length=opts.max_length,
        seed=opts.seed,
        data_seed=opts.seed,
        warmup_steps=opts.warmup if opts.warmup < 1 else int(opts.warmup),
        logging_steps=opts.logging_steps,
        save_strategy="steps" if opts.save_steps > 0 else "no",
        save_steps=max(opts.save_steps, 1),
        **_checkpointing(opts.gradient_checkpointing),
        # bf16 autocast only where it runs (GPUs); bf16 weights on a CPU simply train in bf16.
        bf16=dtype == torch.bfloat16 and device == "cuda",
        fp16=False,
        model_init_kwargs={"dtype": str(dtype).removeprefix("torch.")},
        report_to="none",
        dataloader_pin_memory=device == "cuda",
    )


def _checkpointing(on: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing; use the name it has."""
    from transformers import TrainingArguments

    new = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if new else "gradient_checkpointing": on}


def prepare(opts: TrainOptions, kind: str):
    """(tokenizer with its chat template, text dataset for TRL, HygieneReport)."""
    from accelerate import PartialState

    from dus.instruct.data import DPO_FORMATS, SFT_FORMATS, detect_format, load_rows, to_text
    from dus.instruct.hygiene import clean
    from dus.instruct.load import load_tokenizer

    tokenizer = load_tokenizer(opts.model, opts.chat_template)
    state = PartialState()
    with state.main_process_first():  # under torchrun, rank 0 fills the datasets cache, the others read it
        rows = load_rows(opts.data)
        detect_format(rows.column_names, SFT_FORMATS if kind == "sft" else DPO_FORMATS)
        rows, report = clean(rows, opts.exclude_tasks, opts.task_field, opts.decontaminate, opts.ngram)
        rows = to_text(rows, tokenizer, kind) if report.kept else rows
    if state.is_main_process:
        print(report.line(), file=sys.stderr)
    if report.kept == 0:
        raise InputError("no training examples left after filtering")
    return tokenizer, rows, report


def finish(trainer, opts: TrainOptions, report, stage: str, extra: dict) -> dict:
    """Save a plain Hugging Face model directory (weights, config, tokenizer with its chat template),
    the training arguments as JSON (not Trainer's pickled training_args.bin) and the manifest."""
    from pathlib import Path

    from dus.manifest import stage_manifest, write_manifest

    trainer.save_model(opts.output)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"output": opts.output, "losses": losses, "steps": trainer.state.global_step, "data": vars(report)}
    if trainer.is_world_process_zero():
        out = Path(opts.output)
        (out / "training_args.bin").unlink(missing_ok=True)
        (out / "training_args.json").write_text(trainer.args.to_json_string())
        data = [*opts.data, opts.exclude_tasks, *opts.decontaminate]
        record = stage_manifest(stage, out, opts.model, {**asdict(opts), **extra}, data)
        record["result"] = {k: result[k] for k in ("steps", "losses")}
        write_manifest(out, record)
    return result
