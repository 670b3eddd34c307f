"""Local SFT/DPO data: load JSONL/Parquet, check the format, render chats to text.

Formats are TRL's:

  SFT  `messages`                 a chat; the loss is on its last assistant reply
       `prompt` + `completion`    strings (used verbatim) or message lists
       `text`                     plain language modelling, loss on every token
  DPO  `prompt` + `chosen` + `rejected`   strings or message lists
       `chosen` + `rejected`      whole chats sharing all but the last reply

Chats are rendered to prompt/completion text here, with the tokenizer's chat
template, rather than left to TRL: TRL only masks the prompt of a chat when the
template carries `{% generation %}` markers, which SOLAR's does not, and it only
appends EOS to text data; a model never shown EOS after its reply never stops.
"""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError
from dus.instruct.template import render

SFT_FORMATS = (("messages",), ("prompt", "completion"), ("text",))
DPO_FORMATS = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))


def load_rows(paths: list[str]):
    """A `datasets.Dataset` from local .jsonl/.json/.parquet files."""
    from datasets import load_dataset

    if not paths:
        raise InputError("no training data given")
    kinds = set()
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
        suffix = Path(p).suffix.lower()
        kinds.add("parquet" if suffix == ".parquet" else "json" if suffix in (".jsonl", ".json") else suffix)
    if len(kinds) != 1 or not kinds <= {"json", "parquet"}:
        raise InputError(f"data must be all .jsonl/.json or all .parquet, got {sorted(kinds)}")
    return load_dataset(kinds.pop(), data_files=list(paths), split="train")


def detect_format(columns, formats) -> tuple[str, ...]:
    for fields in formats:
        if all(f in columns for f in fields):
            return fields
    wanted = " | ".join("+".join(f) for f in formats)
    raise InputError(f"data has columns {sorted(columns)}; expected one of: {wanted}")


def _is_chat(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _reply(tokenizer, context: list[dict], reply: list[dict]) -> tuple[str, str]:
    """(prompt text, completion text) for `reply` following `context`."""
    prompt = render(tokenizer, context, add_generation_prompt=True)
    full = render(tokenizer, context + reply, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise InputError("the chat template does not render the prompt as a prefix of prompt + reply")
    return prompt, full[len(prompt) :]


def _split_chat(chat: list[dict]) -> tuple[list[dict], list[dict]]:
    if not chat or chat[-1].get("role") != "assistant":
        raise InputError("each chat must end with an assistant message")
    return chat[:-1], chat[-1:]


def sft_text(example: dict, tokenizer) -> dict:
    """One SFT example as text: {"prompt", "completion"} or {"text"}."""
    if "messages" in example and example["messages"] is not None:
        prompt, completion = _reply(tokenizer, *_split_chat(example["messages"]))
        return {"prompt": prompt, "completion": completion}
    if "prompt" in example:
        if _is_chat(example["prompt"]):
            prompt, completion = _reply(tokenizer, example["prompt"], example["completion"])
            return {"prompt": prompt, "completion": completion}
        return {"prompt": example["prompt"], "completion": example["completion"]}
    return {"text": example["text"]}


def dpo_text(example: dict, tokenizer) -> dict:
    """One preference pair as text: {"prompt", "chosen", "rejected"}."""
    chosen, rejected = example["chosen"], example["rejected"]
    prompt = example.get("prompt")
    if not _is_chat(chosen):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if prompt is None:  # implicit prompt: two whole chats that differ in the last reply
        prompt, chosen = _split_chat(chosen)
        if rejected[:-1] != prompt:
            raise InputError("chosen and rejected chats must share everything but the last reply")
        rejected = rejected[-1:]
    prompt_text, chosen_text = _reply(tokenizer, prompt, chosen)
    _, rejected_text = _reply(tokenizer, prompt, rejected)
    return {"prompt": prompt_text, "chosen": chosen_text, "rejected": rejected_text}


def to_text(dataset, tokenizer, kind: str):
    """The dataset rendered for TRL's text path (`kind` is "sft" or "dpo")."""
    formats, fn = (SFT_FORMATS, sft_text) if kind == "sft" else (DPO_FORMATS, dpo_text)
    detect_format(dataset.column_names, formats)
    return dataset.map(fn, fn_kwargs={"tokenizer": tokenizer}, remove_columns=dataset.column_names)
