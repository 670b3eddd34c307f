"""`dus sft`, `dus dpo`, `dus chat`, `dus contamination`, `dus eval`: the steps after pretraining."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dus.cli import app
from dus.errors import InputError
from dus.quiet import quiet

_DATA = "Data"
_TRAIN = "Training"

# Options shared by sft and dpo, declared once.
MODEL = typer.Argument(..., help="Model directory (or Hub id) to start from.")
DATA = typer.Option(..., "--data", help="Training data, .jsonl/.json or .parquet (repeatable).", rich_help_panel=_DATA)
OUTPUT = typer.Option(..., "--output", "-o", help="Directory for the trained model.")
TEMPLATE = typer.Option(None, "--chat-template", help="solar, or a .jinja file [default: the tokenizer's, SOLAR's if it has none].")
EXCLUDE = typer.Option(None, "--exclude-tasks", help="Drop examples whose task/source matches a name (or *glob*) in this file.", rich_help_panel=_DATA)
TASK_FIELD = typer.Option(None, "--task-field", help="Column holding the task name [default: first of task, task_name, _task_name, source].", rich_help_panel=_DATA)
DECONT = typer.Option(None, "--decontaminate", help="Drop examples sharing a word n-gram with this benchmark file (.jsonl/.json/.txt, repeatable).", rich_help_panel=_DATA)
NGRAM = typer.Option(13, "--ngram", help="n for --decontaminate.", rich_help_panel=_DATA)
LR = typer.Option(None, "--lr", help="Peak learning rate [default: 2e-5 for sft, 5e-7 for dpo].", rich_help_panel=_TRAIN)
EPOCHS = typer.Option(1.0, "--epochs", rich_help_panel=_TRAIN)
MAX_STEPS = typer.Option(-1, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs).", rich_help_panel=_TRAIN)
BATCH = typer.Option(1, "--batch-size", help="Per-device batch size.", rich_help_panel=_TRAIN)
ACCUM = typer.Option(1, "--grad-accum", rich_help_panel=_TRAIN)
SEQ = typer.Option(1024, "--seq-len", "--max-length", help="Longest tokenized sequence (the pack size with --packing).", rich_help_panel=_TRAIN)
SEED = typer.Option(0, "--seed")
DTYPE = typer.Option("auto", "--dtype", help="auto | bfloat16 | float32 [auto: bf16 on a GPU that has it].", rich_help_panel=_TRAIN)
WARMUP = typer.Option(0.0, "--warmup", help="Warmup steps, or a fraction of the run when below 1.", rich_help_panel=_TRAIN)
LOG_STEPS = typer.Option(10, "--logging-steps", rich_help_panel=_TRAIN)
SAVE_STEPS = typer.Option(0, "--save-steps", help="Checkpoint every N steps [0: only the final model].", rich_help_panel=_TRAIN)
CKPT = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing", rich_help_panel=_TRAIN)
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps.")
RUN_DTYPE = typer.Option("auto", "--dtype", help="auto | bfloat16 | float16 | float32 [auto: bf16 on a GPU that has it].")
VERBOSE = typer.Option(False, "--verbose", help="Show library progress bars and warnings.")


def _options(model, data, output, lr, epochs, max_steps, batch_size, grad_accum, seq_len, seed, dtype, chat_template,
             exclude_tasks, task_field, decontaminate, ngram, warmup, logging_steps, save_steps, grad_ckpt):
    from dus.instruct.options import TrainOptions

    return TrainOptions(
        model=model, data=[str(p) for p in data], output=str(output), lr=lr, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, max_length=seq_len, seed=seed, dtype=dtype,
        chat_template=chat_template, exclude_tasks=str(exclude_tasks) if exclude_tasks else None,
        task_field=task_field, decontaminate=[str(p) for p in decontaminate or []], ngram=ngram, warmup=warmup,
        logging_steps=logging_steps, save_steps=save_steps, gradient_checkpointing=grad_ckpt)


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _trained(result: dict) -> None:
    if _main_process():
        losses = result["losses"]
        loss = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
        print(f"saved {result['output']} ({result['steps']} steps{loss})")


@app.command("sft")
def sft_command(
    model: str = MODEL, data: List[Path] = DATA, output: Path = OUTPUT, chat_template: Optional[str] = TEMPLATE,
    packing: bool = typer.Option(False, "--packing", help="Pack examples into --seq-len blocks (TRL best-fit).", rich_help_panel=_TRAIN),
    exclude_tasks: Optional[Path] = EXCLUDE, task_field: Optional[str] = TASK_FIELD,
    decontaminate: Optional[List[Path]] = DECONT, ngram: int = NGRAM,
    lr: Optional[float] = LR, epochs: float = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH,
    grad_accum: int = ACCUM, seq_len: int = SEQ, seed: int = SEED, dtype: str = DTYPE, warmup: float = WARMUP,
    logging_steps: int = LOG_STEPS, save_steps: int = SAVE_STEPS, grad_ckpt: bool = CKPT, verbose: bool = VERBOSE,
):
    """Supervised fine-tuning (TRL SFTTrainer): loss on the assistant reply / completion only.

    Data rows: {"messages": [...]}, {"prompt", "completion"} or {"text"}.
    Multi-GPU: torchrun --nproc-per-node N -m dus sft ...
    """
    from dus.instruct.sft import sft

    quiet(verbose)
    opts = _options(model, data, output, 2e-5 if lr is None else lr, epochs, max_steps, batch_size, grad_accum,
                    seq_len, seed, dtype, chat_template, exclude_tasks, task_field, decontaminate, ngram, warmup,
                    logging_steps, save_steps, grad_ckpt)
    _trained(sft(opts, packing=packing))


@app.command("dpo")
def dpo_command(
    model: str = typer.Argument(..., help="The SFT model directory: the policy starts from it and the frozen reference is reloaded from it."),
    data: List[Path] = DATA, output: Path = OUTPUT, chat_template: Optional[str] = TEMPLATE,
    beta: float = typer.Option(0.1, "--beta", help="Strength of the pull towards the reference model.", rich_help_panel=_TRAIN),
    loss_type: str = typer.Option("sigmoid", "--loss-type", help="TRL DPO loss: sigmoid, ipo, hinge, robust, ... (comma-separated to combine).", rich_help_panel=_TRAIN),
    exclude_tasks: Optional[Path] = EXCLUDE, task_field: Optional[str] = TASK_FIELD,
    decontaminate: Optional[List[Path]] = DECONT, ngram: int = NGRAM,
    lr: Optional[float] = LR, epochs: float = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH,
    grad_accum: int = ACCUM, seq_len: int = SEQ, seed: int = SEED, dtype: str = DTYPE, warmup: float = WARMUP,
    logging_steps: int = LOG_STEPS, save_steps: int = SAVE_STEPS, grad_ckpt: bool = CKPT, verbose: bool = VERBOSE,
):
    """Direct preference optimisation (TRL DPOTrainer) from an SFT model.

    Data rows: {"prompt", "chosen", "rejected"} (strings or message lists) or
    {"chosen", "rejected"} as whole chats. Multi-GPU: torchrun --nproc-per-node N -m dus dpo ...
    """
    from dus.instruct.dpo import dpo

    quiet(verbose)
    opts = _options(model, data, output, 5e-7 if lr is None else lr, epochs, max_steps, batch_size, grad_accum,
                    seq_len, seed, dtype, chat_template, exclude_tasks, task_field, decontaminate, ngram, warmup,
                    logging_steps, save_steps, grad_ckpt)
    _trained(dpo(opts, beta=beta, loss_type=loss_type))


@app.command("chat")
def chat_command(
    model: str = typer.Argument(..., help="Model directory or Hub id."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The user message [default: read from stdin]."),
    system: Optional[str] = typer.Option(None, "--system", help="A system message."),
    messages: Optional[Path] = typer.Option(None, "--messages", help="A JSON list of {role, content} to start from."),
    chat_template: Optional[str] = TEMPLATE,
    max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy; above 0: sample at this temperature (no top-k/top-p)."),
    seed: int = SEED, device: str = DEVICE, dtype: str = RUN_DTYPE, verbose: bool = VERBOSE,
):
    """Single-turn chat: one prompt through the chat template, the reply streamed until EOS."""
    from dus.instruct.chat import build_messages, generate, read_messages
    from dus.instruct.load import load_tokenizer
    from dus.runtime import load_model

    quiet(verbose)
    if prompt is None and messages is None:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise InputError("no prompt: give --prompt, --messages or text on stdin")
    chat = build_messages(prompt, system, read_messages(str(messages)) if messages else None)
    tokenizer = load_tokenizer(model, chat_template)
    lm, _ = load_model(model, device, dtype)
    generate(lm, tokenizer, chat, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stream=True)


@app.command("contamination")
def contamination_command(
    target: str = typer.Argument(..., help="The model under test."),
    ref: str = typer.Option(..., "--ref", help="Reference model that writes the neighbours (e.g. the base model)."),
    data: List[Path] = typer.Option(..., "--data", help="Benchmark JSONL: text, input, or question + answer (repeatable)."),
    examples: int = typer.Option(100, "--examples", help="N examples per file (seeded shuffle)."),
    neighbours: int = typer.Option(100, "--neighbours", help="K reference samples per example."),
    prefix_ratio: float = typer.Option(0.4, "--prefix-ratio", help="Share of words the neighbours start from."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Score at most this many tokens per text."),
    seed: int = SEED, device: str = DEVICE, dtype: str = RUN_DTYPE,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write per-example scores to this JSON file."),
    verbose: bool = VERBOSE,
):
    """Benchmark contamination test (swj0419/detect-pretrain-code-contamination), as on the SOLAR card.

    Prints "result < 0.1, %" per file: the share of examples whose text the target
    finds likelier than >90% of reference-written neighbours. Near 1: likely trained on.
    """
    from dus.eval.contamination import Settings, contamination, table

    quiet(verbose)
    s = Settings(examples=examples, neighbours=neighbours, prefix_ratio=prefix_ratio, seed=seed,
                 batch_size=batch_size, max_length=max_length)
    results = contamination(target, ref, [str(p) for p in data], s, device=device, dtype=dtype)
    print(table(results, s.threshold))
    if output:
        record = {"target": target, "reference": ref, "settings": vars(s),
                  "results": [{"data": r.data, "examples": r.examples, "result < 0.1, %": r.share_below,
                               "scores": r.scores} for r in results]}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="Model directory or Hub id."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="h6 and/or lm-eval task names, comma-separated."),
    perplexity_file: Optional[Path] = typer.Option(None, "--perplexity", help="A text file to measure perplexity on (no extra needed)."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Directory of local lm-eval task YAMLs."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Shots for tasks outside H6 [default: the task's]."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric for tasks outside H6, e.g. acc or exact_match,strict-match [default: first of acc_norm, acc, exact_match, ...]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N examples per task: a smoke test, recorded and marked not comparable in the results."),
    batch_size: str = typer.Option("auto", "--batch-size", help="lm-eval batch size, or auto."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="--perplexity: use at most this many tokens."),
    window: int = typer.Option(512, "--window", help="--perplexity: tokens per scoring window."),
    seed: int = SEED, device: str = DEVICE, dtype: str = RUN_DTYPE,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Directory for results.json and results.md (rewritten after each task; a rerun skips finished tasks)."),
    verbose: bool = VERBOSE,
):
    """Evaluate: lm-evaluation-harness tasks (h6 = Open LLM Leaderboard v1 set) and/or perplexity."""
    from dus.eval import harness
    from dus.eval.results import Report, markdown, model_fingerprint, write

    quiet(verbose)
    if not tasks and perplexity_file is None:
        raise InputError("give --tasks and/or --perplexity")
    main = _main_process()
    out = str(output) if output and main else None  # every rank reads finished scores, rank 0 writes
    report = Report(model, limit=limit, seed=seed, fingerprint=model_fingerprint(model))
    benchmarks = harness.parse_tasks(tasks, num_fewshot, metric) if tasks else []
    plan = harness.prepare(report, benchmarks, str(include_path) if include_path else None,
                           str(output) if output else None) if benchmarks else None  # fails before any model loads
    if perplexity_file is not None:
        report.perplexity = _perplexity(model, perplexity_file, max_tokens, window, device, dtype, out)
    if plan is not None:
        size = int(batch_size) if batch_size.isdigit() else batch_size
        harness.evaluate(report, benchmarks, plan, device, dtype, size, out)
    if main:
        print(markdown(report))
    if out:
        write(report, out)


def _perplexity(model: str, path: Path, max_tokens, window, device, dtype, out: str | None) -> dict:
    from dus.eval.perplexity import perplexity
    from dus.instruct.load import load_tokenizer
    from dus.runtime import load_model

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    lm, _ = load_model(model, device, dtype)
    result = perplexity(lm, load_tokenizer(model), path.read_text(encoding="utf-8"), max_tokens=max_tokens, window=window)
    result = {"data": str(path), **result, "window": window, "max_tokens": max_tokens}
    if out:  # the file earlier versions wrote; results.json holds the same under "perplexity"
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "perplexity.json").write_text(json.dumps({"model": model, **result}, indent=2) + "\n")
    return result
