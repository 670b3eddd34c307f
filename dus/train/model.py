"""Load the model and tokenizer, find the decoder layers, and make the model ready to train.

Order follows torchtitan: activation checkpointing, then torch.compile per
layer, then FSDP2 sharding per layer and at the root.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dus import runtime
from dus.core.vocabulary import POSITION_KEYS
from dus.errors import InputError
from dus.model_dir import check_model_dir
from dus.runtime import decoder_layers
from dus.train.parallel import Dist, load_full_state, shard_model


def load_hf_config(model_dir: str):
    return AutoConfig.from_pretrained(check_model_dir(model_dir))


def load_training_tokenizer(model_dir: str):
    """The runtime's tokenizer for pretraining: it must have an EOS (between packed documents), and no length
    limit (whole documents are tokenized, then packed)."""
    tokenizer = runtime.load_tokenizer(model_dir)
    if tokenizer.eos_token_id is None:
        raise InputError(f"the tokenizer in {model_dir} has no EOS token to separate documents")
    tokenizer.model_max_length = 1 << 62  # we tokenize whole documents, then pack them
    return tokenizer


def max_positions(config) -> int | None:
    text = config.get_text_config()
    for name in POSITION_KEYS:
        if getattr(text, name, None):
            return int(getattr(text, name))
    return None


def model_from_config(config) -> PreTrainedModel:
    """Random fp32 weights (or none, on the meta device), SDPA attention where the architecture has it."""
    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    except (ValueError, ImportError):  # architectures without SDPA keep their default attention
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _from_pretrained(model_dir: str) -> PreTrainedModel:
    """fp32 master weights on the CPU (prepare_model moves or shards them), safetensors only."""
    return runtime.load_model(model_dir, "cpu", "float32", attention="sdpa")[0]


def build_model(model_dir: str, d: Dist) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """(model to train, source of its weights). fp32 master weights. One process: the model itself.
    Several: every rank builds on the meta device and only rank 0 reads the weights, shared after sharding."""
    if d.world == 1:
        return _from_pretrained(model_dir), None
    with torch.device("meta"):
        model = model_from_config(load_hf_config(model_dir))
    return model, _from_pretrained(model_dir) if d.is_main else None


def prepare_model(
    model: PreTrainedModel,
    source: PreTrainedModel | None,
    d: Dist,
    compute_dtype: torch.dtype,
    grad_checkpointing: bool,
    compile: bool,
) -> PreTrainedModel:
    layers = decoder_layers(model)
    model.config.use_cache = False
    if grad_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise InputError(f"{type(model).__name__} does not support --grad-checkpointing")
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile:
        for layer in layers:
            layer.compile()
    if d.world == 1:
        return model.to(d.device)
    shard_model(model, layers, d, compute_dtype)
    model.to_empty(device=d.device)
    load_full_state(model, source, d)
    return model


def param_counts(model: nn.Module) -> dict:
    """Totals from global shapes, so they are the same on every rank and under FSDP."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "trainable": trainable, "non_embedding": total - embedding}
