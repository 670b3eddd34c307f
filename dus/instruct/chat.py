"""Single-turn chat: render one prompt with the chat template, stream the reply.

SOLAR-Instruct was tuned on single-turn data, so a chat with several user turns
is allowed but warned about.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from dus.errors import InputError
from dus.instruct.template import render


def read_messages(path: str) -> list[dict]:
    """A JSON list of {"role", "content"}, or an object with such a list under "messages"."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read messages ({e})") from e
    if isinstance(value, dict):
        value = value.get("messages")
    if not isinstance(value, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value):
        raise InputError(f"{path}: expected a list of {{'role', 'content'}} messages")
    return value


def build_messages(prompt: str | None, system: str | None = None, messages: list[dict] | None = None) -> list[dict]:
    chat = list(messages or [])
    if system is not None:
        chat = [m for m in chat if m["role"] != "system"]
        chat.insert(0, {"role": "system", "content": system})
    if prompt is not None:
        chat.append({"role": "user", "content": prompt})
    if not chat or chat[-1]["role"] != "user":
        raise InputError("the chat must end with a user message")
    if sum(m["role"] == "user" for m in chat) > 1 or any(m["role"] == "assistant" for m in chat):
        print("warning: multi-turn input; SOLAR-style models are tuned for single-turn chat", file=sys.stderr)
    return chat


@dataclass
class Reply:
    text: str
    tokens: int  # generated, EOS included
    stopped: bool  # True: ended at EOS; False: ran into max_new_tokens


def eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config lists (e.g. an end-of-turn token)."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def generate(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    stream: bool = True,
) -> Reply:
    """The reply, greedy unless temperature > 0; printed token by token when `stream`.

    The rendered prompt is tokenized as text with the special tokens, as the SOLAR card does.
    """
    import torch
    from transformers import TextStreamer

    text = render(tokenizer, messages, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", return_token_type_ids=False).to(model.device)
    # Sampling is plain temperature sampling (no top-k/top-p from the model's config), so --temperature means one thing.
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    eos = eos_ids(model, tokenizer)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [None])[0],
            streamer=streamer,
            **sampling,
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    stopped = bool(new) and new[-1] in eos
    return Reply(tokenizer.decode(new, skip_special_tokens=True), len(new), stopped)
