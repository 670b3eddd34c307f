"""Growth operators side by side on SmolLM2-135M: size, build time, and held-out
perplexity before and after the same short continued pretraining.

Every operator of `dus build` (dus with overlap 0/4/8/12, stack x2, interleave
x2, idus, expand, and expand trained LLaMA-Pro style with only its new blocks)
grows the 30-layer SmolLM2-135M-Instruct. The base model itself is the control:
it goes through the same pipeline as an identity copy (`layers 0:30`). Each
model is then trained on the same tokens in the same order (same seed, same
steps, same lr schedule) with `dus pretrain`, and measured before and after on
held-out text.

Text: Python's pydoc_data.topics. A topic whose key has crc32(key) % 5 == 0
is held out, the rest is training data (one JSONL document per topic); so the
two parts share no topic. Held-out perplexity: `dus.eval.perplexity` on the
held-out topics joined by `reference_text(topics=...)` (sorted keys, blank line
between), the first --eval-tokens tokens in --eval-window windows.

Models are built in float32 (bit-identical to the bf16 source weights) so that
the exported trained weights are not rounded back to bf16. Each row is written
to the JSON as soon as it is finished; a rerun with the same settings skips
finished rows. Built models and runs are deleted once measured.

    python scripts/experiments/growth_study.py --quick                  # 2-core CPU, ~30 min
    python scripts/experiments/growth_study.py --steps 500 --seq-len 1024 --batch-size 16 \\
        --eval-tokens 16384 --out runs/growth-gpu                       # one GPU (picked automatically)
    python scripts/experiments/growth_study.py --quick --only base "expand K=6"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
import transformers

import dus
from dus.api import build
from dus.eval.perplexity import perplexity, reference_text
from dus.runtime import load_model, load_tokenizer, resolve_device
from dus.testing.fetch import fetch_smollm2
from dus.train import PretrainConfig, pretrain

HOLD_OUT_MOD = 5  # held out: crc32(key) % HOLD_OUT_MOD == 0
BEGIN, END = "<!-- growth-study:begin -->", "<!-- growth-study:end -->"


def operators(idus_group: int, expand_new: int) -> list[tuple[str, dict, list[str]]]:
    """(name, dus build options, freeze modes to train it with). Every build is float32."""
    return [
        ("base", {"layers": "0:30"}, ["none"]),
        ("dus m=0", {"recipe": "dus", "overlap": 0}, ["none"]),
        ("dus m=4", {"recipe": "dus", "overlap": 4}, ["none"]),
        ("dus m=8", {"recipe": "dus", "overlap": 8}, ["none"]),
        ("dus m=12", {"recipe": "dus", "overlap": 12}, ["none"]),
        ("stack x2", {"recipe": "stack", "factor": 2}, ["none"]),
        ("interleave x2", {"recipe": "interleave", "factor": 2}, ["none"]),
        (f"idus K={idus_group}", {"recipe": "idus", "group": idus_group}, ["none"]),
        (f"expand K={expand_new}", {"recipe": "expand", "new_layers": expand_new}, ["none", "original"]),
    ]


def row_name(op: str, freeze: str) -> str:
    return op if freeze == "none" else f"{op}, freeze={freeze}"


# --- data ---------------------------------------------------------------------------------------


def split_topics() -> tuple[dict[str, str], dict[str, str]]:
    """(train, held_out) topics of pydoc_data.topics, by a hash of the key."""
    from pydoc_data.topics import topics

    held = {k: topics[k].strip() for k in sorted(topics) if zlib.crc32(k.encode()) % HOLD_OUT_MOD == 0}
    train = {k: topics[k].strip() for k in sorted(topics) if k not in held}
    return train, held


def write_train_jsonl(train: dict[str, str], path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in train.values()))
    return path


def count_tokens(texts, model_dir: Path) -> int:
    """Tokens of the documents as dus pretrain packs them: each followed by EOS."""
    tokenizer = load_tokenizer(model_dir)
    return sum(len(tokenizer(t, verbose=False).input_ids) + 1 for t in texts)


# --- measuring ----------------------------------------------------------------------------------


def held_out_perplexity(model_dir: Path, text: str, args) -> dict:
    model, _ = load_model(model_dir, "auto", "float32")
    tokenizer = load_tokenizer(model_dir)
    result = perplexity(model, tokenizer, text, max_tokens=args.eval_tokens, window=args.eval_window)
    del model
    return result


def train(model_dir: Path, data: Path, run_dir: Path, freeze: str, args) -> dict:
    """Continued pretraining with `dus pretrain`; returns the run summary, trainable params and losses."""
    cfg = PretrainConfig(
        model=str(model_dir),
        data=[str(data)],
        output=str(run_dir),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        freeze=freeze,
        log_every=max(1, args.steps // 10),
        save_every=args.steps,
        eval_every=args.steps,
    )
    start = time.perf_counter()
    summary = pretrain(cfg)
    seconds = time.perf_counter() - start
    info = json.loads((run_dir / "run.json").read_text())
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "summary": summary,
        "train_s": seconds,
        "trainable_parameters": info["params"]["trainable"],
        "loss_curve": [[r["step"], r["loss"]] for r in losses if "loss" in r],
    }


def measure_operator(
    name: str, options: dict, freezes: list[str], source: Path, texts: dict, work: Path, args
) -> list[dict]:
    """Build, measure, train once per freeze mode, measure again; delete everything written."""
    model_dir = work / "model"
    start = time.perf_counter()
    record = build(str(source), model_dir, dtype="float32", force=True, **options)
    build_s = time.perf_counter() - start
    before = held_out_perplexity(model_dir, texts["held_out"], args)
    print(
        f"[{name}] {record['output']['num_layers']} layers, built in {build_s:.1f}s, "
        f"perplexity before {before['perplexity']:.3f}",
        flush=True,
    )
    rows = []
    for freeze in freezes:
        run_dir = work / "run"
        trained = train(model_dir, texts["train_file"], run_dir, freeze, args)
        after = held_out_perplexity(run_dir, texts["held_out"], args)
        shutil.rmtree(run_dir)
        rows.append(
            {
                "name": row_name(name, freeze),
                "operator": name,
                "options": options,
                "freeze": freeze,
                "num_layers": record["output"]["num_layers"],
                "num_parameters": record["output"]["num_parameters"],
                "build_s": build_s,
                "before": before,
                "after": after,
                **trained,
            }
        )
        print(
            f"[{rows[-1]['name']}] perplexity after {after['perplexity']:.3f} ({trained['train_s']:.0f}s training)",
            flush=True,
        )
    shutil.rmtree(model_dir)
    return rows


# --- bookkeeping --------------------------------------------------------------------------------


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor()
    )


def machine() -> dict:
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dus": dus.__version__,
        "platform": platform.platform(),
    }


def setup(args, texts: dict, source: Path) -> dict:
    """Everything the numbers depend on; a rerun reuses finished rows only when this is equal."""
    return {
        "model": "SmolLM2-135M-Instruct",
        "source": str(source),
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens_trained": args.steps * args.seq_len * args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "schedule": "dus pretrain defaults: AdamW (0.9, 0.95), weight decay 0.1, cosine to 0.1 x lr, grad clip 1.0",
        "eval_tokens": args.eval_tokens,
        "eval_window": args.eval_window,
        "idus_group": args.idus_group,
        "expand_new_layers": args.expand_new,
        "build_dtype": "float32",
        "split": f"held out: topics with zlib.crc32(key) % {HOLD_OUT_MOD} == 0",
        "held_out_topics": list(texts["held"]),
        "train_topics": len(texts["train"]),
        "held_out_chars": len(texts["held_out"]),
        "train_chars": sum(map(len, texts["train"].values())),
        "train_corpus_tokens": count_tokens(texts["train"].values(), source),
        "compute_device": resolve_device("auto"),
    }  # as dus pretrain chooses


def load_results(path: Path, current: dict) -> dict:
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("setup") == current:
            return old
        print(f"{path} holds results of other settings: starting over", flush=True)
    return {"setup": current, "rows": []}


def save_json(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)  # a crash never leaves half a file


# --- the page -----------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [r["name"].replace(", freeze=", "\nfreeze=") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for shift, key, color in ((-0.2, "before", "#9ecae1"), (0.2, "after", "#08519c")):
        bars = ax.bar(
            [i + shift for i in x], [r[key]["perplexity"] for r in rows], 0.4, color=color, label=f"{key} training"
        )
        ax.bar_label(bars, fmt="%.4g", fontsize=6, padding=1)
    base = next((r for r in rows if r["operator"] == "base"), None)
    if base:
        ax.axhline(base["before"]["perplexity"], color="#9ecae1", ls="--", lw=1, label="base before")
        ax.axhline(base["after"]["perplexity"], color="#08519c", ls="--", lw=1, label="base after")
    s = results["setup"]
    ax.set_yscale("log")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.set_title(
        f"SmolLM2-135M grown by each operator: held-out perplexity before / after "
        f"{s['steps']} steps ({s['tokens_trained']:,} tokens)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict) -> str:
    rows = results["rows"]
    base = next((r for r in rows if r["operator"] == "base"), None)
    lines = [
        "| operator | layers | parameters | trained | build s | train s | ppl before | ppl after "
        "| after / base after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['after']['perplexity'] / base['after']['perplexity']:.3f}" if base else "–"
        lines.append(
            f"| {r['name']} | {r['num_layers']} | {r['num_parameters'] / 1e6:.1f}M | "
            f"{r['trainable_parameters'] / 1e6:.1f}M | {r['build_s']:.1f} | {r['train_s']:.0f} | "
            f"{r['before']['perplexity']:.3f} | {r['after']['perplexity']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def same_layers(results: dict, a: dict, b: dict) -> bool:
    """Whether two rows' operators make the same output layers (planned from headers, no weights read)."""
    from dus.api import plan

    source = results["setup"]["source"]
    return (
        plan(source, **a["options"]).plan.to_json()["layers"] == plan(source, **b["options"]).plan.to_json()["layers"]
    )


def checks(results: dict) -> str:
    """Facts that must hold whatever the budget: expand is the base before training; equal plans, equal numbers."""
    rows, out = results["rows"], []
    base = next((r for r in rows if r["operator"] == "base"), None)
    for r in rows:
        if r["operator"].startswith("expand") and base and r["freeze"] == "none":
            same = r["before"]["nll"] == base["before"]["nll"]
            out.append(
                f"- `{r['operator']}` before training (one measurement for both of its rows): mean NLL "
                f"{r['before']['nll']:.10f} vs the base's {base['before']['nll']:.10f}: "
                f"{'identical' if same else 'DIFFERENT'} (its new blocks add exactly zero)."
            )
    trained = [r for r in rows if r["freeze"] == "none"]
    for i, a in enumerate(trained):
        for b in trained[i + 1 :]:
            if a["num_layers"] == b["num_layers"] and same_layers(results, a, b):
                same = a["before"]["nll"] == b["before"]["nll"] and a["after"]["nll"] == b["after"]["nll"]
                out.append(
                    f"- `{a['name']}` and `{b['name']}` have the same layer map, built "
                    f"and trained separately: before and after numbers {'identical' if same else 'DIFFERENT'}."
                )
    return "\n".join(out)


def results_block(results: dict, png: str) -> str:
    s, m = results["setup"], results["machine"]
    held = ", ".join(f"`{k}`" for k in s["held_out_topics"])
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    epochs = s["tokens_trained"] / s["train_corpus_tokens"]
    return f"""{BEGIN}
<!-- written by scripts/experiments/growth_study.py; edits inside these markers are overwritten -->
- **Command:** `{results["command"]}`, started {results["started"]}, {results["wall_s"] / 60:.1f} min wall clock.
- **Machine:** `nproc` = {m["nproc"]} ({m["cpu"]}{gpu}), compute on {s["compute_device"]}, {m["torch_threads"]} torch
  threads, shared with other jobs; Python {m["python"]}, torch {m["torch"]}, transformers {m["transformers"]},
  dus {m["dus"]}.
- **Training** (`dus.train.pretrain`, the same for every row): {s["steps"]} steps × {s["batch_size"]} blocks ×
  {s["seq_len"]} tokens = **{s["tokens_trained"]:,} tokens** ({epochs:.2f} epochs of the training text), lr
  {s["lr"]:g} with {s["warmup_steps"]} warmup step(s), seed {s["seed"]} (the same blocks in the same order for
  every model); {s["schedule"]}. All parameters train, except in the `freeze=original` row, which trains only
  the blocks that `dus_plan.json` marks new (LLaMA Pro). Float32 on CPU (bf16 autocast on a GPU).
- **Text:** Python {m["python"]}'s `pydoc_data.topics`, {len(s["held_out_topics"]) + s["train_topics"]} topics.
  Held out: the {len(s["held_out_topics"])} topics whose key has `zlib.crc32(key.encode()) % {HOLD_OUT_MOD} == 0`
  ({s["held_out_chars"]:,} characters): {held}.
  Training: the other {s["train_topics"]} topics ({s["train_chars"]:,} characters, {s["train_corpus_tokens"]:,}
  tokens with EOS), one JSONL document each.
- **Perplexity:** `dus.eval.perplexity.perplexity` on the first {s["eval_tokens"]:,} tokens of the held-out topics
  (sorted keys, joined by blank lines, as `reference_text()` joins all of them) in windows of {s["eval_window"]}.
- **Models:** built by `dus.api.build` in float32 (bit-identical to the bf16 source weights, so training updates
  are not rounded away on export). `base` is the identity copy `layers 0:30`, so the control goes through the
  same build, train and measure path. idus: group K = {s["idus_group"]}; expand: K = {s["expand_new_layers"]}
  new blocks. "build s": wall time of `dus.api.build`; "train s": of `dus.train.pretrain` (model load, data,
  steps, final checkpoint and export; noisy on a shared CPU); "trained": trainable parameters.

{table(results)}

![held-out perplexity before and after training per operator]({png})

{checks(results)}
{END}"""


def write_page(results: dict, md: Path, png: Path) -> None:
    block = results_block(results, png.name)
    if md.is_file() and BEGIN in md.read_text() and END in md.read_text():
        text = md.read_text()
        head, rest = text.split(BEGIN, 1)
        md.write_text(head + block + rest.split(END, 1)[1])
    else:
        md.write_text(f"# Growth operators side by side (SmolLM2-135M)\n\n{block}\n")


# --- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CPU budget: 10 steps x 4 x 128 tokens, 2,048 held-out tokens (flags given still win)",
    )
    ap.add_argument("--steps", type=int, help="optimizer steps per model (default 100; quick 10)")
    ap.add_argument("--seq-len", type=int, help="tokens per training block (default 512; quick 128)")
    ap.add_argument("--batch-size", type=int, help="blocks per step (default 8; quick 4)")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    ap.add_argument("--warmup-steps", type=int, help="linear warmup steps (default steps // 10, at least 1)")
    ap.add_argument("--seed", type=int, default=0, help="data order seed (default 0)")
    ap.add_argument("--eval-tokens", type=int, help="held-out tokens measured (default 16384; quick 2048)")
    ap.add_argument("--eval-window", type=int, default=512, help="perplexity window in tokens (default 512)")
    ap.add_argument("--idus-group", type=int, default=6, help="idus group K, must divide 30 (default 6: 48 layers)")
    ap.add_argument(
        "--expand-new", type=int, default=6, help="expand: new blocks K, must divide 30 (default 6: 36 layers)"
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these operators (e.g. base 'dus m=8')")
    ap.add_argument("--out", default="docs/experiments", help="folder for growth-study.{json,md,png}")
    ap.add_argument(
        "--work-dir", help="where to make the scratch folder for built models and runs (default: the system temp dir)"
    )
    args = ap.parse_args()
    quick = {"steps": 10, "seq_len": 128, "batch_size": 4, "eval_tokens": 2048}
    full = {"steps": 100, "seq_len": 512, "batch_size": 8, "eval_tokens": 16384}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup_steps is None:
        args.warmup_steps = max(1, args.steps // 10)
    return args


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"growth-study.{ext}" for ext in ("json", "md", "png")}
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="growth-study-", dir=args.work_dir))  # removed at the end
    source = fetch_smollm2()
    train_topics, held = split_topics()
    texts = {
        "train": train_topics,
        "held": held,
        "held_out": reference_text(topics=held),
        "train_file": write_train_jsonl(train_topics, work / "train.jsonl"),
    }
    results = load_results(paths["json"], setup(args, texts, source))
    started = time.time() - results.get("wall_s", 0.0)
    results.update(
        command="python " + shlex.join(sys.argv),
        machine=machine(),
        started=results.get("started") or datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    done = {r["name"] for r in results["rows"]}
    try:
        for name, options, freezes in operators(args.idus_group, args.expand_new):
            if args.only and name not in args.only:
                continue
            todo = [f for f in freezes if row_name(name, f) not in done]
            if not todo:
                print(f"[{name}] already in {paths['json']}: skipped", flush=True)
                continue
            results["rows"] += measure_operator(name, options, todo, source, texts, work, args)
            results["wall_s"] = time.time() - started
            save_json(results, paths["json"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = time.time() - started
    plot(results, paths["png"])
    write_page(results, paths["md"], paths["png"])
    print(f"wrote {paths['md']}, {paths['png']} and {paths['json']} in {results['wall_s'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
