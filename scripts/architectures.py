"""The architecture matrix: every causal LM of the installed transformers through dus.

    python scripts/architectures.py                 # all, writes docs/architectures.md
    python scripts/architectures.py llama diffllama # some, printed only

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

import argparse
import copy
import datetime
import os
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dus
DOC = ROOT / "docs/architectures.md"
LAYERS, OVERLAP, VOCAB = 6, 2, 96
MEMORY_CAP = 12 * 2**30  # address space, per architecture
TIMEOUT_S = 120  # a shared 2-core machine: most take 5-15 s

# Tiny values for whichever of these fields a config has (its defaults may be 7B-sized).
TINY = {
    "vocab_size": VOCAB, "hidden_size": 32, "n_embd": 32, "d_model": 32, "embed_dim": 32, "intermediate_size": 48,
    "ffn_dim": 48, "n_inner": 48, "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "n_head_kv": 2, "num_kv_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
    "n_positions": 128, "n_ctx": 128, "max_seq_len": 128, "num_hidden_layers": LAYERS, "n_layer": LAYERS,
    "num_layers": LAYERS, "n_layers": LAYERS, "num_blocks": LAYERS, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16, "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4, "v_head_dim": 8, "qk_head_dim": 8, "sliding_window": 8, "global_head_dim": 16,
    "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": VOCAB, "mamba_d_state": 8, "mamba_n_heads": 4,
    "mamba_d_head": 16, "mamba_expand": 2, "state_size": 8, "ssm_state_size": 8, "time_step_rank": 4,
    "conv_kernel": 4, "rotary_dim": 4, "rnn_hidden_size": 32, "lru_width": 32, "embedding_dim": 32,
    "proj_factor_ffn": 1.5,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_attention_heads": 4,
    "encoder_attention_heads": 4, "decoder_ffn_dim": 48, "encoder_ffn_dim": 48,
}
# Fields some configs leave None though their modeling code needs a number (the None is no "off" switch).
NONE_IS_UNSET = ("head_dim", "n_inner", "intermediate_size", "num_experts_per_tok", "num_key_value_heads",
                 "n_routed_experts")
QWEN4_QSA = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 8, "indexer_budget": 4,
             "indexer_compress_ratio": 2}  # budget < the test's 8-14 tokens: the selection is exercised
INKLING2 = {"unpadded_vocab_size": VOCAB - 6, "swa_num_attention_heads": 4, "swa_num_key_value_heads": 2,
            "swa_head_dim": 8, "sliding_window_size": 8}
HYBRID = ["linear_attention"] * 3 + ["full_attention", "linear_attention", "full_attention"]
SLIDING_FULL = ["sliding_attention" if t == "linear_attention" else t for t in HYBRID]
# What a few configs need beyond TINY to be valid.
EXTRA = {
    # Reformer: axial position embeddings factor the positions (8 * 16 = 128) and the hidden size (16 + 16);
    # a fixed hash_seed and num_buckets, so LSH attention hashes alike in every model
    "reformer": {"is_decoder": True, "axial_pos_shape": [8, 16], "axial_pos_embds_dim": [16, 16], "hash_seed": 0,
                 "num_buckets": 4, "attention_head_size": 8, "feed_forward_size": 48},
    # DbrxAttention reads attn_config.rope_theta and clamps with clip_qkv (None fails); real DBRX
    # checkpoints carry both
    "dbrx": {"attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8},
             "ffn_config": {"ffn_hidden_size": 48, "moe_num_experts": 4, "moe_top_k": 2}},
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
    "kimi_linear": {"num_experts_per_tok": 2, "max_position_embeddings": 128, "linear_head_dim": 8,
                    "linear_num_heads": 4},
    "bailing_hybrid": {"num_experts_per_tok": 2, "max_position_embeddings": 128, "n_group": 2, "topk_group": 1},
    # MLA configs whose rotary embedding is sized by head_dim: it must be the rope slice, qk_rope_head_dim
    # (axk1 and youtu derive it so, but a head_dim passed in overrides that)
    "longcat_flash": {"head_dim": 4},
    "axk1": {"head_dim": 4, "n_group": 2, "topk_group": 1},  # expert groups: 8 would leave 4 experts none each
    "youtu": {"head_dim": 4},
    # MLA: one key head per query head (kv_b_proj makes num_attention_heads of them); the DSA indexer
    # keeps 4 of the test's 8-14 tokens, so its selection is exercised
    "axk2": {"num_key_value_heads": 4, "index_topk": 4, "index_head_dim": 8, "index_n_heads": 2},
    # its default rope_parameters ({}) has no entry per layer type: RoPE on sliding layers and none (NoPE)
    # on full ones, the Cohere2 pattern its modeling code allows for
    "cohere_compass_text": {
        "layer_types": SLIDING_FULL,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 50000.0,
                                                  "mrope_section": [2, 1, 1]}, "full_attention": None}},
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
    "dots3_note": {"text_config": {"num_key_value_heads": 4},
                   "vision_config": {"mlp_layer_types": ["dense"] * LAYERS, "adapter_in_dim": 32,
                                     "adapter_out_dim": 32},
                   "audio_config": {"adapter_input_size": 32, "adapter_out_dim": 32, "downsample_hidden_size": 16}},
    "dots3_note_text": {"num_key_value_heads": 4},
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
        if key in TINY and (isinstance(value, (int, float)) and not isinstance(value, bool) or value is None
                            and key in NONE_IS_UNSET):
            out[key] = TINY[key]
        elif isinstance(value, dict) and "model_type" in value:  # a nested sub-config, without its per-layer fields
            out[key] = {**_without_per_layer(value), **_tiny(value)}
    if "attention_types" in config:  # GPT-Neo: [[kinds, repeats]] must cover the layers
        out["attention_types"] = [[["global", "local"], LAYERS // 2]]
    return out


def _without_per_layer(config: dict) -> dict:
    counts = {v for k, v in config.items()
              if k in ("num_hidden_layers", "num_layers", "n_layer") and isinstance(v, int)}
    return {k: v for k, v in config.items()
            if k != "per_layer_config" and not (isinstance(v, list) and len(v) in counts)}


def check(model_type: str, workdir: Path, **extra) -> tuple[str, str]:
    """(verdict, detail) for one architecture; `extra` config fields override the tiny ones."""
    import torch
    import transformers

    import dus.api
    from dus.errors import DusError

    torch.manual_seed(0)
    try:
        config = tiny_config(model_type, **extra)
        model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(workdir / "src")
    except Exception as e:  # noqa: BLE001 - any failure here is the tiny model's, not dus's
        return "not testable here", f"cannot make a tiny model: {_line(e)}"
    try:
        record = dus.api.build(str(workdir / "src"), workdir / "out", overlap=OVERLAP)
    except DusError as e:
        return "refused", _line(e)
    plan = [layer["source_layer"] for layer in record["plan"]["layers"]]
    try:
        built = transformers.AutoModelForCausalLM.from_pretrained(workdir / "out").float().eval()
    except Exception as e:  # noqa: BLE001
        return "WRONG", f"built, but transformers cannot load it: {_line(e)}"
    try:
        reference = reference_model(model, plan, built.config, record["sources"]["base"]["layer_prefix"])
        ids = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = reference(ids).logits
    except Exception as e:  # noqa: BLE001
        return "not testable here", f"the in-memory reference cannot run: {_line(e)}"
    try:
        with torch.no_grad():
            got = built(ids).logits
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
    return "exact", ""


def reference_model(model, plan: list[int], config, prefix: str):
    """An independent up-scaled model: transformers builds it from the output config, then its
    decoder layers are replaced by deep copies of the source's in plan order (carrying whatever
    each source layer computed at construction), their KV-cache indices (layer_idx, layer_id)
    renumbered as transformers numbers that position (Longcat-Flash: two attention sublayers,
    2i and 2i+1), and every other weight is the source's."""
    import torch
    import transformers

    ref = transformers.AutoModelForCausalLM.from_config(config).float()
    name = _stack_name(ref, prefix, len(plan))
    source_stack = model.get_submodule(_stack_name(model, prefix, LAYERS))
    fresh_stack = ref.get_submodule(name)
    layers = torch.nn.ModuleList(copy.deepcopy(source_stack[j]) for j in plan)
    for i, layer in enumerate(layers):
        fresh = _cache_indices(fresh_stack[i])  # what transformers numbers position i's modules, e.g. 2i, 2i+1
        for module_name, module in layer.named_modules():
            for attr in ("layer_idx", "layer_id"):
                if type(getattr(module, attr, None)) is int:
                    setattr(module, attr, fresh.get((module_name, attr), i))
            if isinstance(getattr(module, "config", None), transformers.PreTrainedConfig):
                module.config = ref.config
    ref.set_submodule(name, layers)
    outside = {k: v for k, v in model.state_dict().items() if not k.startswith(name + ".")}
    ref.load_state_dict(outside, strict=False)
    return ref.eval()


def _cache_indices(layer) -> dict:
    return {(module_name, attr): getattr(module, attr) for module_name, module in layer.named_modules()
            for attr in ("layer_idx", "layer_id") if type(getattr(module, attr, None)) is int}


def _stack_name(model, prefix: str, n: int) -> str:
    import torch

    modules = dict(model.named_modules())
    if isinstance(modules.get(prefix.rstrip(".")), torch.nn.ModuleList):
        return prefix.rstrip(".")
    return next(k for k, m in modules.items() if isinstance(m, torch.nn.ModuleList) and len(m) == n)


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def run_one(model_type: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        verdict, detail = check(model_type, Path(tmp))
    return {"model_type": model_type, "verdict": verdict, "detail": detail.replace(f"{tmp}/src/", "")}


def run_isolated(model_type: str, timeout: int = TIMEOUT_S) -> dict:
    """run_one in a forked child (torch, transformers and dus already imported) under a memory
    cap and a timeout."""
    import multiprocessing

    import torch  # noqa: F401 - imported once here, inherited by every fork
    import transformers  # noqa: F401

    import dus.api  # noqa: F401

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(model_type, send), daemon=True)
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
    return {"model_type": model_type, "verdict": "not testable here", "detail": detail}


def _child(model_type: str, send) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    try:
        result = run_one(model_type)
    except MemoryError:
        result = {"model_type": model_type, "verdict": "not testable here", "detail": "over the memory cap"}
    except BaseException as e:  # noqa: BLE001 - dus raised something other than its own errors
        result = {"model_type": model_type, "verdict": "crash", "detail": f"{type(e).__name__}: {_line(e)}"}
    send.send(result)


def write_doc(results: list[dict], path: Path = DOC) -> None:
    import transformers

    counts = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    lines = [
        "# Architectures", "",
        f"Generated by `scripts/architectures.py` on {datetime.date.today()} with transformers "
        f"{transformers.__version__}: every entry of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, a tiny random model "
        f"({LAYERS} layers, every tensor perturbed) built with `dus build --overlap {OVERLAP}` "
        f"({LAYERS} -> {2 * LAYERS - 2 * OVERLAP} layers), loaded with `AutoModelForCausalLM`, logits and cached "
        "greedy generation compared bit for bit with an in-memory reference: transformers builds it from the output "
        "config, "
        "then its decoder layers are replaced by deep copies of the source's in plan order (the output config's "
        "per-layer fields are checked entry by entry against the source's by dus's structural check, "
        "`dus/checks/equivalence.py`).", "",
        "- `exact`: logits (and cached generation) equal the reference's.",
        "- `refused`: dus refuses the plan, with the reason shown (a model that would differ is never written).",
        f"- `WRONG`: built and loaded, but not equal to the reference ({counts.get('WRONG', 0)} in this run).",
        "- `not testable here`: no tiny model could be made or run on this machine; the reason is shown.", "",
        "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "",
        "| architecture | result | detail |", "|---|---|---|",
    ]
    for r in results:
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| `{r['model_type']}` | {r['verdict']} | {detail} |")
    path.write_text("\n".join(lines) + "\n")


def read_doc(path: Path = DOC) -> list[dict]:
    """The rows of a written matrix, to update some of them."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip()[1:-1].split(" | ")]
            rows.append({"model_type": cells[0].strip("`"), "verdict": cells[1],
                         "detail": " | ".join(cells[2:]).replace("\\|", "|")})
    return rows


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_types", nargs="*")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S)
    parser.add_argument("--merge", action="store_true", help="rerun MODEL_TYPES and update their rows in the doc")
    args = parser.parse_args(argv)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = args.model_types or list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    results = []
    for model_type in types:
        results.append(run_isolated(model_type, args.timeout))
        print(f"{model_type:30} {results[-1]['verdict']:18} {results[-1]['detail']}", flush=True)
    if args.merge:
        rerun = {r["model_type"]: r for r in results}
        results = [rerun.get(r["model_type"], r) for r in read_doc()]
    if args.merge or not args.model_types:
        write_doc(results)
    return 1 if any(r["verdict"] in ("WRONG", "crash") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
