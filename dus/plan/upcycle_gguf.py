"""Sparse upcycling of a GGUF: llama.cpp's `llama` architecture with experts (how Mixtral converts).

llama.cpp stacks a layer's experts in one 3-D tensor per projection, `blk.N.ffn_{gate,up,down}_exps`
(ggml dims n_embd x n_ff x n_expert: expert e's rows follow expert e-1's), so a stack of E copies of
the quantized dense tensor is E copies of its bytes, block for block: nothing is de-quantized. The
router `blk.N.ffn_gate_inp` is F32 zeros: every expert is the same copy and llama.cpp renormalises the
top-k weights of the llama architecture, so the output is the dense model's whatever the router picks.
`<arch>.expert_count` and `<arch>.expert_used_count` say E and K. Only `--init copy`: the other
initialisations compute values, which a quantized tensor would need de-quantizing for.
"""

from __future__ import annotations

import dataclasses

from dus.errors import InputError
from dus.plan.layout import TensorSpec
from dus.plan.moe_family import expert_counts
from dus.read.gguf_format import U32, make_value

PROJECTIONS = ("ffn_gate", "ffn_up", "ffn_down")


def gguf_settings(options: dict, source) -> dict:
    """The plan's `moe` entry for a GGUF source, or the refusal."""
    arch, meta = source.architecture, source.metadata
    count = meta.get(f"{arch}.expert_count")
    if count is not None and count.value:
        raise InputError(
            f"the source is already a mixture of experts ({arch}.expert_count = {count.value}): "
            "upcycling grows a dense model"
        )
    if arch != "llama":
        raise InputError(
            f"cannot upcycle a GGUF of architecture {arch}: dus writes llama.cpp's llama architecture "
            "with experts (as Mixtral converts), from a llama GGUF"
        )
    experts, top_k, init = expert_counts(options)
    if init != "copy":
        raise InputError(
            f"--init {init} computes expert values, which in a quantized GGUF would need de-quantization "
            "(not supported): a GGUF upcycles with --init copy"
        )
    layer = source.layer_tensors[0]
    missing = [p for p in PROJECTIONS if f"{p}.weight" not in layer]
    if missing:
        raise InputError(
            f"no recognisable gated MLP ({', '.join(p + '.weight' for p in PROJECTIONS)}) in the GGUF's "
            f"blocks: it has {', '.join(sorted(layer))}"
        )
    return {
        "format": "gguf",
        "family": arch,
        "architecture": f"{arch} with experts (GGUF)",
        "experts": experts,
        "top_k": top_k,
        "init": init,
        "router": "zero",
        "function_preserved": "yes",
    }


def expert_tensors(moe: dict, source, specs: list[TensorSpec]) -> list[TensorSpec]:
    """Each block's ffn_gate/up/down become the router and the three stacked expert tensors, in place."""
    experts, out = moe["experts"], []
    for spec in specs:
        block, _, name = spec.name.rpartition(".ffn_")
        projection = f"ffn_{name.removesuffix('.weight')}"
        if not block.startswith("blk.") or projection not in PROJECTIONS or not name.endswith(".weight"):
            out.append(spec)
            continue
        if projection == "ffn_gate":
            out.append(TensorSpec(f"{block}.ffn_gate_inp.weight", "F32", (experts, spec.shape[-1]), ()))
        out.append(
            dataclasses.replace(
                spec, name=f"{block}.{projection}_exps.weight", shape=(experts, *spec.shape), parts=spec.parts * experts
            )
        )
    return out


def expert_metadata(moe: dict, source, metadata: dict) -> dict:
    """The metadata with `<arch>.expert_count` and `<arch>.expert_used_count` after the block count."""
    arch, out = source.architecture, {}
    for key, value in metadata.items():
        out[key] = value
        if key == f"{arch}.block_count":
            out[f"{arch}.expert_count"] = make_value(U32, moe["experts"])
            out[f"{arch}.expert_used_count"] = make_value(U32, moe["top_k"])
    return out
