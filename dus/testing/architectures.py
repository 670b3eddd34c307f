"""The architecture matrix's causal LMs: every one of the installed transformers through dus (run by
dus/testing/matrix.py, `python scripts/architectures.py`).

Each architecture runs in its own forked process under a memory cap and a
timeout (some configs default to huge sizes): a tiny random model (6 layers, every
tensor perturbed) is built with `dus build --overlap 2` (6 -> 8 layers), loaded
with AutoModelForCausalLM, and its logits and cached greedy generation are
compared with an in-memory reference whose layers are deep copies of the
source's in plan order. The verdict is `exact`, `refused (reason)`, `not
testable here (why)`, or `WRONG` (loads and runs, but differs: the bug class
this matrix exists to keep empty).
"""

from __future__ import annotations

import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dus.testing.reference import reference_model

DOC = Path("docs/architectures.md")  # in a checkout; scripts/architectures.py passes the path
LAYERS, OVERLAP, VOCAB = 6, 2, 96
MEMORY_CAP = 12 * 2**30  # address space, per architecture
TIMEOUT_S = 120  # a shared 2-core machine: most take 5-15 s

# Tiny values for whichever of these fields a config has (its defaults may be 7B-sized).
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "n_embd": 32,
    "d_model": 32,
    "embed_dim": 32,
    "intermediate_size": 48,
    "ffn_dim": 48,
    "n_inner": 48,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_heads": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "n_head_kv": 2,
    "num_kv_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 128,
    "n_positions": 128,
    "n_ctx": 128,
    "max_seq_len": 128,
    "num_hidden_layers": LAYERS,
    "n_layer": LAYERS,
    "num_layers": LAYERS,
    "n_layers": LAYERS,
    "num_blocks": LAYERS,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "num_local_experts": 4,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "kv_lora_rank": 8,
    "q_lora_rank": 8,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "qk_head_dim": 8,
    "sliding_window": 8,
    "global_head_dim": 16,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "hidden_size_per_layer_input": 8,
    "vocab_size_per_layer_input": VOCAB,
    "mamba_d_state": 8,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_expand": 2,
    "state_size": 8,
    "ssm_state_size": 8,
    "time_step_rank": 4,
    "conv_kernel": 4,
    "rotary_dim": 4,
    "rnn_hidden_size": 32,
    "lru_width": 32,
    "embedding_dim": 32,
    "proj_factor_ffn": 1.5,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_attention_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_ffn_dim": 48,
    "encoder_ffn_dim": 48,
}
# Fields some configs leave None though their modeling code needs a number (the None is no "off" switch).
NONE_IS_UNSET = (
    "head_dim",
    "n_inner",
    "intermediate_size",
    "num_experts_per_tok",
    "num_key_value_heads",
    "n_routed_experts",
)
QWEN4_QSA = {
    "indexer_n_heads": 2,
    "indexer_kv_heads": 1,
    "indexer_head_dim": 8,
    "indexer_budget": 4,
    "indexer_compress_ratio": 2,
}  # budget < the test's 8-14 tokens: the selection is exercised
INKLING2 = {
    "unpadded_vocab_size": VOCAB - 6,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 2,
    "swa_head_dim": 8,
    "sliding_window_size": 8,
}
HYBRID = ["linear_attention"] * 3 + ["full_attention", "linear_attention", "full_attention"]
SLIDING_FULL = ["sliding_attention" if t == "linear_attention" else t for t in HYBRID]
# What a few configs need beyond TINY to be valid.
EXTRA = {
    # Reformer: axial position embeddings factor the positions (8 * 16 = 128) and the hidden size (16 + 16);
    # a fixed hash_seed and num_buckets, so LSH attention hashes alike in every model
    "reformer": {
        "is_decoder": True,
        "axial_pos_shape": [8, 16],
        "axial_pos_embds_dim": [16, 16],
        "hash_seed": 0,
        "num_buckets": 4,
        "attention_head_size": 8,
        "feed_forward_size": 48,
    },
    # DbrxAttention reads attn_config.rope_theta and clamps with clip_qkv (None fails); real DBRX
    # checkpoints carry both
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8},
        "ffn_config": {"ffn_hidden_size": 48, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "zaya": {"num_experts_per_tok": 1},
    # Qwen4-Exp's full-attention layers always carry the QSA token indexer, which needs all five fields
    "qwen4_exp_text": QWEN4_QSA,
    "qwen4_exp": {"text_config": QWEN4_QSA},
    "mamba2": {"head_dim": 16, "n_groups": 2},  # hidden_size * expand = num_heads * head_dim; heads per group
    "falcon_h1": {"mamba_d_ssm": 64},  # = mamba_n_heads * mamba_d_head
    # Hybrids as released (an all-Mamba default stack fails in transformers' get_seq_length): attention at
    # layers 3 and 5, so the repeated block (layers 2, 3) holds one Mamba and one attention layer
    "bamba": {"attn_layer_indices": [3, 5]},
    "granitemoehybrid": {"layer_types": HYBRID},
    # Two "hybrid" layers (the shared transformer, then Mamba), at 2 and 5. Zamba's default period and
    # offset leave 6 layers one, so its shared weights have no layer to be tied to; Zamba2's default
    # layers_block_type is for 54 layers.
    "zamba": {"attn_layer_period": 3, "attn_layer_offset": 2},
    "zamba2": {"layers_block_type": ["linear_attention", "linear_attention", "hybrid"] * 2, "adapter_rank": 8},
    "lfm2_moe": {"layer_types": ["conv" if t == "linear_attention" else t for t in HYBRID]},  # no default
    # Kimi-Linear stores these under other names (num_experts_per_token, model_max_length), which TINY misses
    "kimi_linear": {
        "num_experts_per_tok": 2,
        "max_position_embeddings": 128,
        "linear_head_dim": 8,
        "linear_num_heads": 4,
    },
    "bailing_hybrid": {"num_experts_per_tok": 2, "max_position_embeddings": 128, "n_group": 2, "topk_group": 1},
    # MLA configs whose rotary embedding is sized by head_dim: it must be the rope slice, qk_rope_head_dim
    # (axk1 and youtu derive it so, but a head_dim passed in overrides that)
    "longcat_flash": {"head_dim": 4},
    "axk1": {"head_dim": 4, "n_group": 2, "topk_group": 1},  # expert groups: 8 would leave 4 experts none each
    "deepseek_v3": {"head_dim": 4, "n_group": 2, "topk_group": 1},
    # MLA with a DSA indexer, as axk2: one key head per query head; the indexer keeps 4 of the test's tokens
    "deepseek_v32": {
        "head_dim": 4,
        "num_key_value_heads": 4,
        "n_group": 2,
        "topk_group": 1,
        "index_topk": 4,
        "index_head_dim": 8,
        "index_n_heads": 2,
    },
    "glm_moe_dsa": {
        "head_dim": 4,
        "num_key_value_heads": 4,
        "n_group": 2,
        "topk_group": 1,
        "index_topk": 4,
        "index_head_dim": 8,
        "index_n_heads": 2,
    },
    "youtu": {"head_dim": 4},
    # MLA: one key head per query head (kv_b_proj makes num_attention_heads of them); the DSA indexer
    # keeps 4 of the test's 8-14 tokens, so its selection is exercised
    "axk2": {"num_key_value_heads": 4, "index_topk": 4, "index_head_dim": 8, "index_n_heads": 2},
    # its default rope_parameters ({}) has no entry per layer type: RoPE on sliding layers and none (NoPE)
    # on full ones, the Cohere2 pattern its modeling code allows for
    "cohere_compass_text": {
        "layer_types": SLIDING_FULL,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 50000.0, "mrope_section": [2, 1, 1]},
            "full_attention": None,
        },
    },
    # Inkling-2: the head is unpadded_vocab_size wide (the saved one is padded to vocab_size), and the
    # sliding layers have heads of their own
    "inkling2_text": INKLING2,
    "inkling2_loop_text": INKLING2,
    # xLSTMCache sizes its state by qk_dim and v_dim rounded up to multiples of 64, the layers unrounded:
    # only widths that are multiples of 64 (32 * 2) agree
    "xlstm": {"qk_dim_factor": 2.0, "v_dim_factor": 2.0},
    # Gemma-3n: the last layers reuse the KV cache of the last earlier layer of their type, so those
    # earlier layers must hold both types (the default shares 15 of 6)
    "gemma3n_text": {"num_kv_shared_layers": 2, "layer_types": SLIDING_FULL, "laurel_rank": 8},
    "dots1": {"n_shared_experts": 1},  # None by default, yet the shared expert's width is a multiple of it
    # dots3_note's towers: a 6-layer dense vision stack (its default expert pyramid is for 42 layers),
    # adapters sized to the tiny towers and text model
    "dots3_note": {
        "text_config": {"num_key_value_heads": 4},
        "vision_config": {"mlp_layer_types": ["dense"] * LAYERS, "adapter_in_dim": 32, "adapter_out_dim": 32},
        "audio_config": {"adapter_input_size": 32, "adapter_out_dim": 32, "downsample_hidden_size": 16},
    },
    "dots3_note_text": {"num_key_value_heads": 4},
    # Nemotron-H: the layer count is the per-layer list's length (its default has 4); Mamba, MoE, attention, MLP
    "nemotron_h": {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "full_attention"],
        "moe_shared_expert_intermediate_size": 16,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "n_groups": 2,
        "chunk_size": 8,
    },
}


def tiny_config(model_type: str, **extra):
    import transformers

    defaults = transformers.AutoConfig.for_model(model_type).to_dict()
    fields = _merged(_merged(_tiny(defaults), EXTRA.get(model_type, {})), extra)
    return transformers.AutoConfig.for_model(model_type, **fields)


def _merged(base: dict, override: dict) -> dict:
    """`override` over `base`, sub-config by sub-config (an EXTRA for a text_config keeps its tiny sizes)."""
    out = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both_dicts else value
    return out


def _tiny(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if key in TINY and (
            isinstance(value, (int, float)) and not isinstance(value, bool) or value is None and key in NONE_IS_UNSET
        ):
            out[key] = TINY[key]
        elif isinstance(value, dict) and "model_type" in value:  # a nested sub-config, without its per-layer fields
            out[key] = {**_without_per_layer(value), **_tiny(value)}
    if "attention_types" in config:  # GPT-Neo: [[kinds, repeats]] must cover the layers
        out["attention_types"] = [[["global", "local"], LAYERS // 2]]
    return out


def _without_per_layer(config: dict) -> dict:
    counts = {
        v for k, v in config.items() if k in ("num_hidden_layers", "num_layers", "n_layer") and isinstance(v, int)
    }
    return {
        k: v for k, v in config.items() if k != "per_layer_config" and not (isinstance(v, list) and len(v) in counts)
    }


def tiny_model(model_type: str, **extra):
    """A seeded tiny random model of the type, every tensor perturbed (default inits leave biases and norms
    constant, and a misplaced copy of a constant cannot show)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type, **extra)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def check(model_type: str, workdir: Path, build_options: dict | None = None, **extra) -> tuple[str, str]:
    """(verdict, detail) for one architecture; `extra` config fields override the tiny ones, `build_options`
    (dus.api.build's: layers, stack, ...) the default plan (--overlap 2)."""
    import transformers

    try:
        model = tiny_model(model_type, **extra)
        model.save_pretrained(workdir / "src")
    except Exception as e:  # noqa: BLE001 - any failure here is the tiny model's, not dus's
        return "not testable here", f"cannot make a tiny model: {_line(e)}"
    return grown_and_compared(
        model,
        workdir,
        transformers.AutoModelForCausalLM,
        build_options or {"overlap": OVERLAP},
        lambda record: (record["sources"]["base"]["layer_prefix"], LAYERS),
    )


def grown_and_compared(model, workdir: Path, auto_class, build_options: dict, stack, inputs=None) -> tuple[str, str]:
    """Build workdir/src (where `model` is saved) into workdir/out, load it with `auto_class`, and compare it with
    the reference: logits and cached greedy generation on text, and logits on `inputs(model)` (an image) where
    given. `stack(record)` is the reference's (prefix, source layer count)."""
    import torch

    import dus.api
    from dus.errors import DusError

    try:
        record = dus.api.build(str(workdir / "src"), workdir / "out", **build_options)
    except DusError as e:
        return "refused", _line(e)
    plan = [layer["source_layer"] for layer in record["plan"]["layers"]]
    try:
        built = auto_class.from_pretrained(workdir / "out").float().eval()
    except Exception as e:  # noqa: BLE001
        return "WRONG", f"built, but transformers cannot load it: {_line(e)}"
    try:
        reference = reference_model(model, plan, built.config, *stack(record))
        ids = torch.randint(3, VOCAB - 16, (1, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = reference(input_ids=ids).logits
    except Exception as e:  # noqa: BLE001
        return "not testable here", f"the in-memory reference cannot run: {_line(e)}"
    try:
        with torch.no_grad():
            got = built(input_ids=ids).logits
    except Exception as e:  # noqa: BLE001
        return "WRONG", f"built and loaded, but it cannot run: {_line(e)}"
    if not torch.equal(got, want):
        return "WRONG", f"logits differ by up to {(got - want).abs().max().item():.3g}"
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    try:
        want_gen = reference.generate(ids, **kwargs)
    except Exception as e:  # noqa: BLE001
        return "exact", f"logits exact; the reference cannot generate ({_line(e)})"
    if not torch.equal(built.generate(ids, **kwargs), want_gen):
        return "WRONG", "logits exact, cached generation differs"
    return ("exact", "") if inputs is None else _with_image(built, reference, model, inputs)


def _with_image(built, reference, model, inputs) -> tuple[str, str]:
    import torch

    try:
        given = inputs(model)  # the source model must accept it
    except Exception as e:  # noqa: BLE001
        return "exact", f"text only (no generic image input for the tiny model: {_line(e)})"
    with torch.no_grad():
        got, want = built(**given).logits, reference(**given).logits
    if not torch.equal(got, want):
        return "WRONG", f"text exact; with an image, logits differ by up to {(got - want).abs().max().item():.3g}"
    return "exact", "text and image"


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class Row:
    """One row of the matrix: an architecture, and what differs from its default tiny model and plan."""

    model_type: str
    variant: str = ""  # shown beside the name
    extra: tuple = ()  # config fields, as sorted (key, value) pairs
    build_options: tuple = ()  # dus.api.build's, as (key, value) pairs; empty: --overlap 2

    def run(self, workdir: Path) -> tuple[str, str]:
        return check(self.model_type, workdir, dict(self.build_options) or None, **dict(self.extra))


def variant(model_type: str, label: str, extra: dict | None = None, **build_options) -> Row:
    return Row(model_type, label, tuple(sorted((extra or {}).items())), tuple(sorted(build_options.items())))


DENSE_FIRST = "first_k_dense_replace 1, --overlap 2: the dense layer stays first (DeepSeek-V3: 3 of 61 with m = 8)"
# Plans users build that the tiny --overlap 2 plan does not show: a second row each.
VARIANTS = {
    **{
        t: [variant(t, DENSE_FIRST, {"first_k_dense_replace": 1})]
        for t in ("deepseek_v3", "deepseek_v32", "glm_moe_dsa")
    },
    "zamba": [variant("zamba", "--layers 0:6,3:6: a whole attention period repeated", layers="0:6,3:6")],
    "gemma3n_text": [
        variant("gemma3n_text", "--layers 0:2,0:6: the KV-sharing sources stay last of their type", layers="0:2,0:6"),
        variant("gemma3n_text", "num_kv_shared_layers 0", {"num_kv_shared_layers": 0}),
    ],
}


def rows(model_types: list[str]) -> list[Row]:
    return [row for t in model_types for row in [Row(t), *VARIANTS.get(t, [])]]


def run_one(row) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        verdict, detail = row.run(Path(tmp))
    return {
        "model_type": row.model_type,
        "variant": row.variant,
        "verdict": verdict,
        "detail": detail.replace(f"{tmp}/src/", ""),
    }


def run_isolated(row, timeout: int = TIMEOUT_S) -> dict:
    """run_one in a forked child (torch, transformers and dus already imported) under a memory
    cap and a timeout."""
    import multiprocessing

    import torch  # noqa: F401 - imported once here, inherited by every fork
    import transformers  # noqa: F401

    import dus.api  # noqa: F401

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(row, send), daemon=True)
    child.start()
    send.close()
    result = None
    if receive.poll(timeout):
        try:
            result = receive.recv()
        except EOFError:  # died before answering
            pass
    else:
        child.kill()
    child.join(5)
    if result is not None:
        return result
    if child.exitcode is None or child.exitcode == -9 and not receive.closed:
        detail = f"took over {timeout} s"
    else:
        detail = f"the process died (exit {child.exitcode}; over the {MEMORY_CAP >> 30} GiB memory cap?)"
    return {"model_type": row.model_type, "variant": row.variant, "verdict": "not testable here", "detail": detail}


def _child(row, send) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    os.nice(10)  # a shared machine: the sweep yields to interactive work
    try:
        result = run_one(row)
    except MemoryError:
        result = {"verdict": "not testable here", "detail": "over the memory cap"}
    except BaseException as e:  # noqa: BLE001 - dus raised something other than its own errors
        result = {"verdict": "crash", "detail": f"{type(e).__name__}: {_line(e)}"}
    send.send({"model_type": row.model_type, "variant": row.variant, **result})
