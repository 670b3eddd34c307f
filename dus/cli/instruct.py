"""`dus sft`, `dus dpo`, `dus chat`, `dus contamination`, `dus eval`: the steps after pretraining.

The options are dataclass fields (dus/instruct/options.py, dus/eval/options.py); this
module only hands them over and prints.
"""

from __future__ import annotations

import sys

from dus.cli import app
from dus.cli.options import options_command
from dus.errors import InputError
from dus.eval.options import ContaminationOptions, EvalOptions
from dus.eval.run import main_process
from dus.instruct.options import ChatOptions, DPOOptions, SFTOptions
from dus.quiet import quiet


def _trained(result: dict) -> None:
    if main_process():
        losses = result["losses"]
        loss = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
        print(f"saved {result['output']} ({result['steps']} steps{loss})")


@options_command(app, "sft", SFTOptions)
def sft_command(opts: SFTOptions) -> None:
    """Supervised fine-tuning (TRL SFTTrainer): loss on the assistant reply / completion only.

    Data rows: {"messages": [...]}, {"prompt", "completion"} or {"text"}.
    Multi-GPU: torchrun --nproc-per-node N -m dus sft ...
    """
    from dus.instruct.sft import sft

    with quiet(opts.verbose):
        _trained(sft(opts, packing=opts.packing))


@options_command(app, "dpo", DPOOptions)
def dpo_command(opts: DPOOptions) -> None:
    """Direct preference optimisation (TRL DPOTrainer) from an SFT model.

    Data rows: {"prompt", "chosen", "rejected"} (strings or message lists) or
    {"chosen", "rejected"} as whole chats. Multi-GPU: torchrun --nproc-per-node N -m dus dpo ...
    """
    from dus.instruct.dpo import dpo

    with quiet(opts.verbose):
        _trained(dpo(opts, beta=opts.beta, loss_type=opts.loss_type))


@options_command(app, "chat", ChatOptions)
def chat_command(opts: ChatOptions) -> None:
    """Single-turn chat: one prompt through the chat template, the reply streamed until EOS."""
    from dus.instruct.chat import build_messages, generate, read_messages
    from dus.instruct.load import load_chat_tokenizer
    from dus.runtime import load_model

    prompt = opts.prompt
    if prompt is None and opts.messages is None:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise InputError("no prompt: give --prompt, --messages or text on stdin")
    chat = build_messages(prompt, opts.system, read_messages(opts.messages) if opts.messages else None)
    with quiet(opts.verbose):
        tokenizer = load_chat_tokenizer(opts.model, opts.chat_template)
        lm, _ = load_model(opts.model, opts.device, opts.dtype)
        generate(
            lm,
            tokenizer,
            chat,
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            seed=opts.seed,
            stream=True,
        )


@options_command(app, "contamination", ContaminationOptions)
def contamination_command(opts: ContaminationOptions) -> None:
    """Benchmark contamination test (swj0419/detect-pretrain-code-contamination), as on the SOLAR card.

    Prints "result < 0.1, %" per file: the share of examples whose text the target
    finds likelier than >90% of reference-written neighbours. Near 1: likely trained on.
    """
    from dus.eval.contamination import table
    from dus.eval.run import check_contamination

    with quiet(opts.verbose):
        results, settings = check_contamination(opts)
    print(table(results, settings.threshold))


@options_command(app, "eval", EvalOptions)
def eval_command(opts: EvalOptions) -> None:
    """Evaluate: lm-evaluation-harness tasks (h6 = Open LLM Leaderboard v1 set) and/or perplexity."""
    from dus.bars import CountBar
    from dus.eval.results import markdown
    from dus.eval.run import evaluate

    with quiet(opts.verbose):
        report = evaluate(opts, say=lambda line: print(line, file=sys.stderr, flush=True), bar=CountBar)
    if main_process():
        print(markdown(report))
