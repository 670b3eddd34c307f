"""The options of `dus sft`, `dus dpo` and `dus chat`; what SFT and DPO share: the TRL config, data preparation."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dus.errors import InputError
from dus.options import device_option, dtype_option, option, seed_option, verbose_option

DATA, TRAIN = "Data", "Training"  # help panels
TEMPLATE = "solar, or a .jinja file [default: the tokenizer's, SOLAR's if it has none]."


@dataclass
class TrainOptions:
    """The options `dus sft` and `dus dpo` share (dus/options.py makes them flags and --config keys)."""

    model: str = option("", "Model directory (or Hub id) to start from.", positional=True, required=True,
                        metavar="MODEL")
    data: list[str] = option([], "Training data, .jsonl/.json or .parquet (repeatable).", required=True, panel=DATA)
    output: str = option("", "Directory for the trained model.", short="-o", required=True)
    chat_template: str | None = option(None, TEMPLATE)
    exclude_tasks: str | None = option(None, "Drop examples whose task/source matches a name (or *glob*) in this file.",
                                       panel=DATA)
    task_field: str | None = option(None, "Column holding the task name [default: first of task, task_name, "
                                          "_task_name, source].", panel=DATA)
    decontaminate: list[str] = option([], "Drop examples sharing a word n-gram with this benchmark file "
                                          "(.jsonl/.json/.txt, repeatable).", panel=DATA)
    ngram: int = option(13, "n for --decontaminate.", panel=DATA)
    lr: float = option(1e-5, "Peak learning rate.", panel=TRAIN)
    epochs: float = option(1.0, "Passes over the data.", panel=TRAIN)
    max_steps: int = option(-1, "Stop after this many optimizer steps (overrides --epochs).", panel=TRAIN)
    batch_size: int = option(1, "Per-device batch size.", panel=TRAIN)
    grad_accum: int = option(1, "Micro-batches per optimizer step.", panel=TRAIN)
    seq_len: int = option(1024, "Longest tokenized sequence (the pack size with --packing).", aliases=("max_length",),
                          panel=TRAIN)
    seed: int = seed_option()
    dtype: str = dtype_option("auto | bfloat16 | float32 [auto: bf16 on a GPU that has it].")
    warmup: float = option(0.0, "Warmup steps, or a fraction of the run when below 1.", panel=TRAIN)
    logging_steps: int = option(10, "Log the loss every N steps.", panel=TRAIN)
    save_steps: int = option(0, "Checkpoint every N steps [0: only the final model].", panel=TRAIN)
    gradient_checkpointing: bool = option(True, "Recompute activations in backward to save memory.", panel=TRAIN)
    verbose: bool = verbose_option()


@dataclass
class SFTOptions(TrainOptions):
    lr: float = option(2e-5, "Peak learning rate.", panel=TRAIN)
    packing: bool = option(False, "Pack examples into --seq-len blocks (TRL best-fit).", panel=TRAIN)


@dataclass
class DPOOptions(TrainOptions):
    model: str = option("", "The SFT model directory: the policy starts from it and the frozen reference is "
                            "reloaded from it.", positional=True, required=True, metavar="MODEL")
    lr: float = option(5e-7, "Peak learning rate.", panel=TRAIN)
    beta: float = option(0.1, "Strength of the pull towards the reference model.", panel=TRAIN)
    loss_type: str = option("sigmoid", "TRL DPO loss: sigmoid, ipo, hinge, robust, ... (comma-separated to combine).",
                            panel=TRAIN)


@dataclass
class ChatOptions:
    model: str = option("", "Model directory or Hub id.", positional=True, required=True, metavar="MODEL")
    prompt: str | None = option(None, "The user message [default: read from stdin].", short="-p")
    system: str | None = option(None, "A system message.")
    messages: str | None = option(None, "A JSON list of {role, content} to start from.")
    chat_template: str | None = option(None, TEMPLATE)
    max_new_tokens: int = option(512, "Stop the reply after this many tokens.")
    temperature: float = option(0.0, "0: greedy; above 0: sample at this temperature (no top-k/top-p).")
    seed: int = seed_option()
    device: str = device_option()
    dtype: str = dtype_option()
    verbose: bool = verbose_option()


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
    the training arguments as JSON (pickle_free) and the manifest."""
    from dus.manifest import stage_manifest, write_manifest

    trainer.save_model(opts.output)  # with training_args.json (pickle_free)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"output": opts.output, "losses": losses, "steps": trainer.state.global_step, "data": vars(report)}
    if trainer.is_world_process_zero():
        out = Path(opts.output)
        data = [*opts.data, opts.exclude_tasks, *opts.decontaminate]
        record = stage_manifest(stage, out, opts.model, {**asdict(opts), **extra}, data)
        record["result"] = {k: result[k] for k in ("steps", "losses")}
        write_manifest(out, record)
        from dus.write.card import stage_card

        (out / "README.md").write_text(stage_card(stage, opts.model, f"Trained with `dus {stage}` on "
                                                  f"{len(opts.data)} data file(s) (the options are in dus_plan.json)."))
    return result
