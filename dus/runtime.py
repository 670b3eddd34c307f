"""The runtime every stage after the build shares (train, instruct, eval, analyze):
which device and dtype, loading a model and tokenizer, and finding the decoder layers.

Names are parsed here once, so `--dtype bf16` means the same to every command.
torch and transformers are imported inside the functions: the build path
(`dus plan`/`dus build`) parses `--dtype` here too and never imports torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dus.core.vocabulary import LAYER_COUNT_KEYS
from dus.errors import InputError
from dus.read.source import is_repo_id, local_tensors


def cache_root() -> Path:
    """dus's own cache ($DUS_CACHE, else ~/.cache/dus): the fetched SmolLM2, the remembered plan checks."""
    return Path(os.environ.get("DUS_CACHE") or Path.home() / ".cache" / "dus")


DTYPES = {  # accepted --dtype value -> canonical name (a torch dtype's, and config.json's)
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
DEVICES = ("auto", "cuda", "cpu", "mps", "cuda:N")  # what --device accepts, for messages


def dtype_name(name: str | None) -> str:
    """The canonical name of a --dtype value ("auto" for none), or InputError."""
    if name is None:
        return "auto"
    canonical = DTYPES.get(str(name).lower())
    if canonical is None:
        raise InputError(f"unknown dtype {name!r} for --dtype: use {', '.join(DTYPES)}")
    return canonical


def device_name(name: str | None) -> str:
    """A --device value, checked for form only (not whether this machine has it)."""
    name = "auto" if name is None else str(name)
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        return name
    raise InputError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")


def resolve_device(name: str | None = "auto") -> str:
    """The device to run on: "auto" takes CUDA, then Apple's MPS, then the CPU; a named one must exist."""
    import torch

    name = device_name(name)
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}, but PyTorch sees no CUDA device")
        if ":" in name and int(name.partition(":")[2]) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not mps:
        raise InputError("--device mps, but PyTorch sees no MPS device")
    return name


def resolve_dtype(name: str | None = "auto", device: str = "cpu"):
    """A torch dtype. "auto": bfloat16 on a GPU that has it, else float32 (CPUs are slow in half precision)."""
    import torch

    name = dtype_name(name)
    if name != "auto":
        return getattr(torch, name)
    if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_model(ref: str | Path) -> str:
    """A model directory with a config.json, or an owner/name Hub id; anything else fails now
    rather than after Hub retries. A local directory must hold safetensors weights: pickle
    checkpoints (.bin, .pt, ...) are refused, never loaded."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ref
    if not path.exists() and is_repo_id(ref):
        return ref
    from dus.model_dir import model_dir_error

    raise model_dir_error(ref, hub_id=True)


def check_weights(ref: str | Path) -> str:
    """`check_model`, and a local directory must have safetensors weights (a pickle-only one is refused)."""
    if str(ref).endswith(".gguf"):
        raise InputError(
            f"{ref}: a .gguf file; this command reads a model directory (`dus eval --perplexity` and "
            "`dus chat` read .gguf files)"
        )
    ref = check_model(ref)
    path = Path(ref).expanduser()
    if path.is_dir() and local_tensors(path) is None:
        raise InputError(f"{ref}: no model.safetensors or model.safetensors.index.json in the model directory")
    return ref


def load_tokenizer(ref: str | Path):
    from transformers import AutoTokenizer

    if str(ref).endswith(".gguf"):
        from dus.read.gguf_model import load_gguf

        return load_gguf(ref, "tokenizer")
    ref = check_model(ref)
    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot load the tokenizer from {ref}: {_one_line(e)}") from None


def load_model(
    ref: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    *,
    attention: str | None = None,
    device_map: str | None = None,
):
    """A causal LM from safetensors weights only, in eval mode on `device`: (model, device used).
    `attention` (e.g. "sdpa") is asked for where the architecture has it, else its default is kept.
    `device_map` (accelerate's, e.g. "auto") places a model larger than one GPU across devices; the
    device returned is then its input embedding's. A .gguf file is read through transformers (dequantized)."""
    device = resolve_device(device) if device_map is None else "cuda"
    if str(ref).endswith(".gguf"):
        from dus.read.gguf_model import load_gguf

        return load_gguf(ref, "model", dtype=resolve_dtype(dtype, device)).to(device).eval(), device
    ref = check_weights(ref)
    kwargs = {"dtype": resolve_dtype(dtype, device), "use_safetensors": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = _from_pretrained(ref, kwargs, attention)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot load the model from {ref}: {_one_line(e)}") from None
    if device_map is not None:
        return model.eval(), model.get_input_embeddings().weight.device
    return model.to(device).eval(), device


def _from_pretrained(ref: str, kwargs: dict, attention: str | None):
    from transformers import AutoModelForCausalLM

    if attention:
        try:
            return AutoModelForCausalLM.from_pretrained(ref, **kwargs, attn_implementation=attention)
        except (ValueError, ImportError):  # the architecture has no such attention: keep its default
            pass
    return AutoModelForCausalLM.from_pretrained(ref, **kwargs)


def decoder_layers(model):
    """The ModuleList of decoder blocks: the one whose blocks are the classes the model names in
    `_no_split_modules` (what accelerate's auto-wrap and device maps use); without that, the
    ModuleList as long as the config's layer count."""
    from torch import nn

    from dus.private_api import unsplit_blocks

    n = num_layers(model.config)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    blocks = unsplit_blocks(model)
    named = [m for _, m in lists if blocks and all(type(layer).__name__ in blocks for layer in m)]
    if named:
        return named[0]
    if lists:
        return lists[0][1]
    raise InputError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def num_layers(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in LAYER_COUNT_KEYS:
        if isinstance(getattr(text, key, None), int):
            return getattr(text, key)
    raise InputError(f"{type(config).__name__} has no layer count (num_hidden_layers)")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
