#!/usr/bin/env python3
"""Throughput and MFU of `dus pretrain`'s training step on a depth up-scaled Llama, random weights.

The model is a TinyLlama-shaped base (hidden 2048, GQA 32/4 heads, SwiGLU 5632,
vocab 32000) of 16 layers grown by SOLAR depth up-scaling (`dus` recipe,
overlap 4) to 24 layers: about 1.2B parameters. It runs the same code as
`dus pretrain` (prepare_model, build_optimizer, train_step) on random tokens.

    python scripts/bench_pretrain.py                        # one GPU, bf16
    python scripts/bench_pretrain.py --compile --grad-checkpointing
    torchrun --nproc-per-node 8 scripts/bench_pretrain.py   # FSDP2
    python scripts/bench_pretrain.py --size tiny            # CPU smoke check

Prints one JSON line: tokens/s (all ranks and per device), MFU, step time, peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig

from dus.plan.recipes import dus
from dus.runtime import DTYPES, resolve_dtype
from dus.train.config import PretrainConfig
from dus.train.loop import build_optimizer, cosine_schedule, train_step
from dus.train.metrics import flops_per_token, peak_flops
from dus.train.model import model_from_config, param_counts, prepare_model
from dus.train.parallel import close_distributed, init_distributed

SIZES = {  # base model shape; the benchmark trains its DUS-grown version
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "num_hidden_layers": 16,
        "max_position_embeddings": 4096,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "num_hidden_layers": 4,
        "max_position_embeddings": 256,
    },
}


def upscaled_config(size: str, overlap: int) -> LlamaConfig:
    base = SIZES[size]
    layers = dus(base["num_hidden_layers"], overlap)
    return LlamaConfig(**{**base, "num_hidden_layers": len(layers)}, tie_word_embeddings=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="1b")
    ap.add_argument("--overlap", type=int, default=None, help="DUS overlap (default: a quarter of the base layers)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 2048 (tiny: 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="per device; default 4 (tiny: 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 20 (tiny: 3)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--dtype", default="auto", choices=[k for k, v in DTYPES.items() if v != "float16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    args = ap.parse_args()
    tiny = args.size == "tiny"
    seq_len = args.seq_len or (64 if tiny else 2048)
    batch_size = args.batch_size or (2 if tiny else 4)
    steps = args.steps or (3 if tiny else 20)

    d = init_distributed()
    try:
        config = upscaled_config(args.size, args.overlap or SIZES[args.size]["num_hidden_layers"] // 4)
        dtype = resolve_dtype(args.dtype, str(d.device))
        torch.manual_seed(0)
        if d.world == 1:
            with d.device:
                model, source = model_from_config(config), None
        else:  # as in dus pretrain: rank 0 holds the weights, every rank builds on meta and gets its shard
            with torch.device("meta"):
                model = model_from_config(config)
            source = model_from_config(config) if d.is_main else None
        model = prepare_model(model, source, d, dtype, args.grad_checkpointing, args.compile)
        del source
        optimizer = build_optimizer(model, PretrainConfig(lr=3e-4), d.device)
        scheduler = cosine_schedule(optimizer, 10, 1000, 0.1)
        counts = param_counts(model)
        batch = torch.randint(
            0, config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(d.rank)
        )

        for _ in range(args.warmup):
            train_step(model, optimizer, scheduler, [batch], d, dtype, 1.0)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            loss, _, _ = train_step(model, optimizer, scheduler, [batch], d, dtype, 1.0)
        loss = loss.item()  # waits for the device
        seconds = time.perf_counter() - start

        per_device = steps * batch_size * seq_len / seconds
        peak = peak_flops(d.device)
        result = {
            "size": args.size,
            "layers": config.num_hidden_layers,
            "params": counts["total"],
            "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
            "world": d.world,
            "dtype": str(dtype).removeprefix("torch."),
            "seq_len": seq_len,
            "batch_size": batch_size,
            "compile": args.compile,
            "grad_checkpointing": args.grad_checkpointing,
            "steps": steps,
            "step_s": seconds / steps,
            "tokens_per_s": per_device * d.world,
            "tokens_per_s_per_device": per_device,
            "mfu": per_device * flops_per_token(config, counts["non_embedding"], seq_len) / peak if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(d.device) / 2**30 if d.device.type == "cuda" else None,
            "loss": loss,
        }
        if d.is_main:
            print(json.dumps(result), flush=True)
    finally:
        close_distributed()


if __name__ == "__main__":
    main()
