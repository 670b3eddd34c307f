"""Device, dtype and model loading shared by training, chat and evaluation."""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError
from dus.read.source import is_repo_id

DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str = "auto", device: str = "cpu"):
    """A torch dtype. "auto": bf16 on a GPU that has it, else float32 (CPUs are slow in half precision)."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    if DTYPES[dtype] is not None:
        return getattr(torch, DTYPES[dtype])
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_model(ref: str) -> str:
    """A local directory or an owner/name Hub id; anything else fails now rather than after Hub retries."""
    if Path(ref).expanduser().is_dir() or is_repo_id(ref):
        return ref
    raise InputError(f"{ref}: no such model directory (nor an owner/name Hub id)")


def load_tokenizer(path: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    from dus.instruct.template import set_chat_template

    check_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise InputError(f"{path}: cannot load a tokenizer ({e})") from e
    set_chat_template(tokenizer, chat_template)
    return tokenizer


def load_model(path: str, device: str = "auto", dtype: str = "auto"):
    """A causal LM in eval mode on `device`, with the device actually used."""
    from transformers import AutoModelForCausalLM

    check_model(path)
    device = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device))
    except OSError as e:
        raise InputError(f"{path}: cannot load a model ({e})") from e
    return model.to(device).eval(), device
