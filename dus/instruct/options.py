"""The options of `dus sft`, `dus dpo` and `dus chat` (dus/options.py makes them flags and --config keys)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.options import device_option, dtype_option, option, seed_option, verbose_option

DATA, TRAIN = "Data", "Training"  # help panels
TEMPLATE = "solar, or a .jinja file [default: the tokenizer's, SOLAR's if it has none]."


@dataclass
class TrainOptions:
    """The options `dus sft` and `dus dpo` share (dus/options.py makes them flags and --config keys)."""

    model: str = option(
        "", "Model directory (or Hub id) to start from.", positional=True, required=True, metavar="MODEL"
    )
    data: list[str] = option([], "Training data, .jsonl/.json or .parquet (repeatable).", required=True, panel=DATA)
    output: str = option("", "Directory for the trained model.", short="-o", required=True)
    chat_template: str | None = option(None, TEMPLATE)
    exclude_tasks: str | None = option(
        None, "Drop examples whose task/source matches a name (or *glob*) in this file.", panel=DATA
    )
    task_field: str | None = option(
        None, "Column holding the task name [default: first of task, task_name, _task_name, source].", panel=DATA
    )
    decontaminate: list[str] = option(
        [], "Drop examples sharing a word n-gram with this benchmark file (.jsonl/.json/.txt, repeatable).", panel=DATA
    )
    ngram: int = option(13, "n for --decontaminate.", panel=DATA)
    lr: float = option(1e-5, "Peak learning rate.", panel=TRAIN)
    epochs: float = option(1.0, "Passes over the data.", panel=TRAIN)
    max_steps: int = option(-1, "Stop after this many optimizer steps (overrides --epochs).", panel=TRAIN)
    batch_size: int = option(1, "Per-device batch size.", panel=TRAIN)
    grad_accum: int = option(1, "Micro-batches per optimizer step.", panel=TRAIN)
    seq_len: int = option(
        1024, "Longest tokenized sequence (the pack size with --packing).", aliases=("max_length",), panel=TRAIN
    )
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
    model: str = option(
        "",
        "The SFT model directory: the policy starts from it and the frozen reference is reloaded from it.",
        positional=True,
        required=True,
        metavar="MODEL",
    )
    lr: float = option(5e-7, "Peak learning rate.", panel=TRAIN)
    beta: float = option(0.1, "Strength of the pull towards the reference model.", panel=TRAIN)
    loss_type: str = option(
        "sigmoid", "TRL DPO loss: sigmoid, ipo, hinge, robust, ... (comma-separated to combine).", panel=TRAIN
    )


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
