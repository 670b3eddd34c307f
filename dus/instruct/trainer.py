"""What SFT and DPO share around TRL's trainers: the config from the options, the data, a pickle-free save,
and the finished model's manifest."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from dus.errors import InputError
from dus.instruct.options import TrainOptions


def config_kwargs(opts: TrainOptions) -> dict:
    """Keyword arguments common to SFTConfig and DPOConfig."""
    import torch

    from dus.runtime import resolve_device, resolve_dtype

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
        max_length=opts.seq_len,
        seed=opts.seed,
        data_seed=opts.seed,
        warmup_steps=opts.warmup if opts.warmup < 1 else int(opts.warmup),
        logging_steps=opts.logging_steps,
        save_strategy="steps" if opts.save_steps > 0 else "no",
        save_steps=max(opts.save_steps, 1),
        save_only_model=True,  # checkpoint-N holds the model, not pickled optimizer, scheduler and RNG state
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

    from dus.instruct.data import (
        DPO_FORMATS,
        SFT_FORMATS,
        detect_format,
        load_rows,
        to_text,
    )
    from dus.instruct.hygiene import clean
    from dus.instruct.load import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(opts.model, opts.chat_template)
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


def pickle_free(trainer_class):
    """`trainer_class` (TRL's SFTTrainer, DPOTrainer) writing the training arguments of every save
    (the final model and each checkpoint-N) as training_args.json. Trainer._save pickles them,
    `torch.save(self.args, "training_args.bin")`, as its last step: that one call is answered
    without writing, and the JSON written instead. Every other save goes through untouched."""

    class PickleFreeTrainer(trainer_class):
        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            import transformers.trainer as trainer_module

            real = trainer_module.torch
            trainer_module.torch = _TorchSavingNoArguments(real)
            try:
                super()._save(output_dir, state_dict)
            finally:
                trainer_module.torch = real
            if self.args.should_save:
                target = Path(output_dir or self.args.output_dir) / "training_args.json"
                target.write_text(self.args.to_json_string())

    PickleFreeTrainer.__name__ = PickleFreeTrainer.__qualname__ = trainer_class.__name__
    return PickleFreeTrainer


class _TorchSavingNoArguments:
    """torch, except that torch.save of TrainingArguments writes nothing (pickle_free)."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def save(self, obj, *args, **kwargs):
        from transformers import TrainingArguments

        if not isinstance(obj, TrainingArguments):
            return self._torch.save(obj, *args, **kwargs)


def finish(trainer, opts: TrainOptions, report, stage: str, extra: dict) -> dict:
    """Save a plain Hugging Face model directory (weights, config, tokenizer with its chat template),
    the training arguments as JSON (pickle_free) and the manifest, published into OUTPUT as one model
    (dus.core.publish.atomic_model_files): a failed save leaves OUTPUT's previous model, or none."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"output": opts.output, "losses": losses, "steps": trainer.state.global_step, "data": vars(report)}
    if not trainer.is_world_process_zero():
        trainer.save_model(opts.output)  # joins the gather of sharded weights; writes nothing off the main process
        return result
    from dus.core.publish import atomic_model_files, follow_umask
    from dus.manifest import stage_manifest, write_manifest
    from dus.write.card import stage_card

    out = Path(opts.output)
    with atomic_model_files(out) as staging:
        trainer.save_model(str(staging))  # with training_args.json (pickle_free)
        data = [*opts.data, opts.exclude_tasks, *opts.decontaminate]
        record = stage_manifest(stage, staging, opts.model, {**asdict(opts), **extra}, data)
        record["result"] = {k: result[k] for k in ("steps", "losses")}
        write_manifest(staging, record)
        card = stage_card(
            stage,
            opts.model,
            f"Trained with `dus {stage}` on {len(opts.data)} data file(s) (the options are in dus_plan.json).",
        )
        (staging / "README.md").write_text(card)
    follow_umask(out)  # the checkpoint-N the trainer saved in OUTPUT: safetensors writes them 0600
    return result
