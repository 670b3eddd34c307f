#!/usr/bin/env python3
"""Benchmark `dus upcycle` against a byte-copy floor (docs/upcycle.md, docs/benchmarks.md).

Sources: `smollm2` (the cached SmolLM2-135M-Instruct, bf16) and `7b-layers` (a synthetic source of
Mistral-7B-shaped layers, 2 by default: each output layer is an 8x7B-shaped Mixtral layer; a whole
8x7B output needs ~93 GB of disk). Times whole processes, alternating, warm page cache and a warm
check cache (bench_build.py's `run`): `dus upcycle SRC OUT --experts 8 --top-k 2` (BLAKE3 of every
shard) against a floor that copies exactly the output's byte-copied ranges (each dense MLP tensor
once per expert) with os.copy_file_range, planned from headers, no hashing, no header writing.

    python scripts/bench_upcycle.py --source smollm2 --repeats 3
    python scripts/bench_upcycle.py --source 7b-layers --layers 2 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_build  # noqa: E402  (run, measure_machine, the Mistral shapes)

FLOOR = (
    textwrap.dedent("""
    import os, sys
    from dus.plan.make import make_plan
    from dus.plan.options import PlanOptions
    from dus.plan.tensors import planned_tensors
    from dus.read.source import open_source
    from dus.write.shards import split_shards
    # the upcycled plan from headers alone: none of the build's checks, no computed tensors
    sources = {"base": open_source(sys.argv[1])}
    options = PlanOptions(source=sys.argv[1], recipe="stack", factor=1, experts=int(sys.argv[3]), top_k=2)
    plan = make_plan(sources, options)  # with the experts: make_plan reads them
    specs = [s for s in planned_tensors(plan, sources) if s.is_byte_copy]
""")
    + bench_build.FLOOR_COPY
)


def source(args, work: Path) -> Path:
    if args.source == "smollm2":
        from dus.testing.fetch import fetch_smollm2

        return Path(fetch_smollm2())
    src = work / f"src-7b-{args.layers}"
    if not (src / "config.json").is_file():
        config = {**bench_build.MISTRAL, **bench_build.SCALES["7b"], "num_hidden_layers": args.layers}
        subprocess.run([sys.executable, "-c", bench_build.SYNTHESIZE, str(src), json.dumps(config)], check=True)
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("smollm2", "7b-layers"), default="smollm2")
    parser.add_argument("--layers", type=int, default=2, help="7b-layers: how many Mistral-7B-shaped layers")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dus-bench-upcycle-"))
    work.mkdir(parents=True, exist_ok=True)
    src = source(args, work)
    machine = bench_build.measure_machine(work)
    tools = {
        "dus upcycle": [
            sys.executable,
            "-m",
            "dus",
            "upcycle",
            str(src),
            str(work / "out-dus"),
            "--experts",
            str(args.experts),
            "--top-k",
            "2",
            "--force",
        ],
        "floor": [sys.executable, "-c", FLOOR, str(src), str(work / "out-floor"), str(args.experts)],
    }
    outputs = {"dus upcycle": work / "out-dus", "floor": work / "out-floor"}
    cache = work / "dus-cache"
    shutil.rmtree(cache, ignore_errors=True)
    results = {name: [] for name in tools}
    for name in tools:  # warm-up: page cache, interpreters, the check cache; not counted
        bench_build.run(tools[name], outputs[name], src, cache, False)
    for _ in range(args.repeats):
        for name in tools:
            results[name].append(bench_build.run(tools[name], outputs[name], src, cache, False))
    source_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))

    def med(name, i):
        return statistics.median(r[i] for r in results[name])

    load = os.getloadavg()[0]
    print(
        f"\n### {args.source} -> {args.experts} experts — {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end\n\n{machine}\n"
    )
    print(f"source {source_bytes / 1e9:.2f} GB, median of {args.repeats} alternating runs, warm page cache\n")
    print("| tool | wall (s), median | min–max | peak RSS (MiB) | output (GB) | wall vs floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in results:
        wall, rss, written = med(name, 0), med(name, 1), med(name, 2)
        low, high = min(r[0] for r in results[name]), max(r[0] for r in results[name])
        print(
            f"| {name} | {wall:.2f} | {low:.2f}–{high:.2f} | {rss / 2**20:.0f} | {written / 1e9:.2f} "
            f"| {wall / med('floor', 0):.2f}× |"
        )
    shutil.rmtree(cache, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
