"""`dus compare BASE GROWN...`: the demo's comparison for any models, side by side: perplexity on one text
and a greedy reply to one prompt, every model measured the same way (float32 on the CPU by default, so
the numbers compare across machines)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.errors import InputError
from dus.options import option, verbose_option

PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass
class CompareOptions:
    models: list[str] = option(
        [],
        "BASE first, then the models to compare with it: model directories, Hub ids or .gguf files",
        positional=True,
        metavar="BASE GROWN...",
    )
    text: str | None = option(None, "Text file for the perplexity [default: Python's pydoc_data.topics].")
    prompt: str = option(PROMPT, "The user message every model replies to (greedy, through its chat template).")
    max_tokens: int = option(4096, "Perplexity: at most this many tokens of the text.")
    window: int = option(512, "Perplexity: tokens per scoring window.")
    max_new_tokens: int = option(40, "Stop each reply after this many tokens.")
    device: str = option("cpu", "cpu | cuda | cuda:N | mps | auto (cpu: the same numbers on any machine).")
    dtype: str = option("float32", "auto | bfloat16 | float16 | float32.")
    json: bool = option(False, "Print one JSON object instead of a table.")
    verbose: bool = verbose_option()


def compare_models(opts: CompareOptions, say=None) -> dict:
    """{"text", "prompt", "models": [{"model", "layers", "parameters", "perplexity", "nll", "tokens", "reply"}]}."""
    from pathlib import Path

    from dus.eval.perplexity import perplexity, reference_text

    if len(opts.models) < 2:
        raise InputError("give BASE and at least one model to compare with it: dus compare BASE GROWN...")
    if opts.text is not None and not Path(opts.text).is_file():
        raise InputError(f"{opts.text}: does not exist" if not Path(opts.text).exists() else f"{opts.text}: not a file")
    text = Path(opts.text).read_text(encoding="utf-8") if opts.text else reference_text()
    rows = []
    for ref in opts.models:
        if say:
            say(f"measuring {ref}")
        model, tokenizer = _load(ref, opts.device, opts.dtype)
        rows.append(
            {
                "model": ref,
                "layers": _layers(model),
                "parameters": sum(p.numel() for p in model.parameters()),
                **perplexity(model, tokenizer, text, max_tokens=opts.max_tokens, window=opts.window),
                "reply": _reply(model, tokenizer, opts.prompt, opts.max_new_tokens),
            }
        )
        del model
    return {"text": opts.text or "pydoc_data.topics", "prompt": opts.prompt, "models": rows}


def _load(ref: str, device: str, dtype: str):
    """As `dus chat` loads: the tokenizer's chat template, SOLAR's where it has none."""
    from dus.instruct.load import load_chat_tokenizer
    from dus.runtime import load_model

    tokenizer = load_chat_tokenizer(ref)
    return load_model(ref, device, dtype)[0], tokenizer


def _layers(model) -> int:
    from dus.runtime import num_layers

    return num_layers(model.config)


def _reply(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy, through the same prompt rendering as `dus chat`."""
    from dus.instruct.chat import generate

    reply = generate(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens, stream=False)
    return reply.text.strip()


def table(result: dict) -> str:
    """A markdown table, BASE first; perplexity also as a ratio to BASE's."""
    base = result["models"][0]["perplexity"]
    rows = [
        f"perplexity on {result['text']}; greedy reply to {result['prompt']!r}",
        "",
        "| model | layers | parameters | perplexity | vs base | tokens | reply |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["models"]:
        reply = " ".join(r["reply"].split()).replace("|", "\\|")
        rows.append(
            f"| {r['model']} | {r['layers']} | {r['parameters']:,} | {r['perplexity']:.2f} | "
            f"{r['perplexity'] / base:.2f}x | {r['tokens']:,} | {reply} |"
        )
    return "\n".join(rows)
