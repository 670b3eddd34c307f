#!/usr/bin/env python3
"""A short CPU continued-pretraining run of an upcycled SmolLM2 (docs/upcycle.md): loss curve and
tokens per expert, plotted.

Upcycles SmolLM2-135M-Instruct into a 4-expert, top-2 Mixtral (copy), then `dus pretrain`s it on
Python's help topics (dus.pipeline.tinydata, every eighth topic held out) with the router's
load-balancing loss. To fit 4 GB of CPU memory only the last `--train-layers` layers train
(`--freeze layers:...`); the others keep their random routers. Writes WORK/metrics.jsonl and the plot.

    python scripts/upcycle_cpt.py --work /tmp/cpt --plot docs/experiments/upcycle-cpt.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--plot", required=True)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train-layers", type=int, default=6)
    parser.add_argument("--aux", type=float, default=0.01)
    args = parser.parse_args()
    import dus.api
    from dus.pipeline.tinydata import prepare
    from dus.testing.fetch import fetch_smollm2
    from dus.train.loop import pretrain

    work = Path(args.work)
    data = prepare("pydoc-topics", work / "data") / "pretrain"
    moe = work / "moe"
    if not (moe / "config.json").is_file():
        dus.api.upcycle(str(fetch_smollm2()), moe, experts=args.experts, top_k=2)
    layers = json.loads((moe / "config.json").read_text())["num_hidden_layers"]
    summary = pretrain(
        {
            "model": str(moe),
            "data": [str(data / "train.jsonl")],
            "eval_data": [str(data / "eval.jsonl")],
            "output": str(work / "run"),
            "seq_len": 256,
            "batch_size": 2,
            "max_steps": args.steps,
            "lr": 1e-4,
            "warmup_steps": 4,
            "eval_every": args.steps // 4,
            "eval_batches": 8,
            "log_every": 1,
            "save_every": 0,
            "final_checkpoint": False,
            "router_aux_loss_coef": args.aux,
            "freeze": f"layers:{layers - args.train_layers}:{layers}",
        }
    )
    plot(work / "run" / "metrics.jsonl", Path(args.plot), args)
    print(json.dumps(summary, indent=2))


def plot(metrics: Path, out: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (+ aux)")
    left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss (LM only)")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    left.set_title(f"upcycled SmolLM2-135M, {args.experts} experts top-2, last {args.train_layers} layers trained")
    shares = [[c / sum(r["tokens_per_expert"]) for c in r["tokens_per_expert"]] for r in train]
    for e in range(args.experts):
        right.plot([r["step"] for r in train], [s[e] for s in shares], label=f"expert {e}")
    right.axhline(1 / args.experts, color="grey", linestyle=":", label="balanced")
    right.set_xlabel("step")
    right.set_ylabel("share of routed tokens (all layers)")
    right.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
