"""Tiny random models, made from transformers' config classes, and the tokenizer and LLaMA factories every test uses."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from dus.testing.reference import reference_model  # noqa: F401 - the one builder, re-exported for the tests

VOCAB = 96
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(
    **TOKENS,
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
MULTI_HEAD = {k: v for k, v in COMMON.items() if k != "num_key_value_heads"}  # configs without grouped queries

ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=8),
    "mixtral": lambda: transformers.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=6, max_window_layers=2),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, head_dim=8, sliding_window=6),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=8, sliding_window=6, sliding_window_pattern=2
    ),
    "gpt2": lambda: transformers.GPT2Config(
        **TOKENS, vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=128
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**MULTI_HEAD),
    "olmo2": lambda: transformers.Olmo2Config(**COMMON),
    "starcoder2": lambda: transformers.Starcoder2Config(**COMMON, sliding_window=8),
    "cohere2": lambda: transformers.Cohere2Config(**COMMON, sliding_window=6),
    "phi": lambda: transformers.PhiConfig(**MULTI_HEAD),
    "granite": lambda: transformers.GraniteConfig(**COMMON),
}


def make_model(arch: str, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = ARCHITECTURES[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    # Default inits leave biases and norms at constants; perturb every tensor so a
    # misplaced copy cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def save_model(arch: str, directory, seed: int = 0, dtype=torch.float32, max_shard_size=None):
    model = make_model(arch, seed, dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return model


def assert_verified(directory, layers: int, computed: int = 0):
    """`dus verify` passes (it raises on any mismatch) and says what it proved: the planned depth, and every
    tensor's bytes against its source, `computed` of them recomputed (zeroed, scaled, blended) rather than copied."""
    import dus.api

    checks = dus.api.verify(directory).checks
    assert f"config.json as planned ({layers} layers)" in checks, checks
    assert any(
        c.startswith("bytes of all tensors match their sources") and c.endswith(f", {computed} computed)")
        for c in checks
    ), checks


def bpe_tokenizer(texts: list[str], vocab_size: int, specials: dict[str, str], all_bytes: bool = False):
    """A byte-level BPE trained here on `texts`, so no tokenizer is downloaded.

    `specials` maps the tokenizer's role names to tokens (e.g. {"eos_token": "</s>"}), in id order from 0;
    with a `bos_token` every encoding starts with it. `all_bytes` puts all 256 bytes in the vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=specials.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if all_bytes else []
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials.values()),
            initial_alphabet=alphabet,
            show_progress=False,
        ),
    )
    if "bos_token" in specials:
        bos = specials["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **specials)


def tiny_llama(tokenizer, layers: int, seed: int = 0, **config):
    """A seeded random LLaMA (hidden 64) sized to `tokenizer`, with its special-token ids; `config` overrides."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **config})).eval()


def load_tensors(directory) -> dict:
    """Every tensor of a model directory's safetensors files, by name."""
    from safetensors import safe_open

    out = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out
