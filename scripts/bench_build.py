#!/usr/bin/env python3
"""Benchmark `dus build` against mergekit's passthrough merge and a byte-copy floor.

Synthesizes a Mistral-shaped checkpoint (`mid`: hidden 2048, intermediate 7168,
32 layers, ~1.9B parameters, bf16; `7b`: the Mistral-7B shape), then times, in
one run and alternating, each whole process building the SOLAR DUS stack
(overlap 8, slices [0,24] + [8,32]):
  - dus:       python -m dus build SRC OUT --overlap 8
  - mergekit:  mergekit-yaml passthrough (when --mergekit points at it)
  - floor:     a minimal process copying exactly the output's tensor byte ranges
               with os.copy_file_range, no header parsing, no hashing
Reports median wall time and peak RSS (ru_maxrss from wait4; this script never
imports torch, so a child's figure is its own) and the ratios, as Markdown.

    python scripts/bench_build.py --scale mid --repeats 3 --mergekit /path/to/mergekit-yaml
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

SCALES = {
    "mid": dict(hidden_size=2048, intermediate_size=7168, num_hidden_layers=32, num_attention_heads=16,
                num_key_value_heads=8),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}
MISTRAL = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000,
           "max_position_embeddings": 32768, "sliding_window": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}

SYNTHESIZE = """
import json, sys
from dus.write.synthetic import write_synthetic
print(write_synthetic(sys.argv[1], json.loads(sys.argv[2]), "bfloat16"))
"""

# The floor: the same output bytes, moved the cheapest way, planned from the same headers.
FLOOR = textwrap.dedent("""
    import os, sys
    from dus.api import plan
    from dus.write.shards import split_shards
    specs = plan(sys.argv[1], overlap=8).tensors
    os.makedirs(sys.argv[2], exist_ok=True)
    fds = {}
    for i, shard in enumerate(split_shards(specs, 5 * 10**9)):
        out = os.open(os.path.join(sys.argv[2], f"{i}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for spec in shard:
            info = spec.parts[0][0]
            fd = fds.setdefault(info.path, os.open(info.path, os.O_RDONLY))
            offset, left = info.start, info.nbytes
            while left:
                moved = os.copy_file_range(fd, out, left, offset)
                offset += moved
                left -= moved
        os.close(out)
""")


def mergekit_config(src: Path, n: int, m: int) -> str:
    return textwrap.dedent(f"""\
        slices:
          - sources:
              - model: {src}
                layer_range: [0, {n - m}]
          - sources:
              - model: {src}
                layer_range: [{m}, {n}]
        merge_method: passthrough
        dtype: bfloat16
        """)


def warm(src: Path) -> None:
    """Read the source into the page cache: mergekit's 8 GiB RSS evicts it, and the
    next tool would otherwise pay for disk reads the others do not."""
    # In a child process: a buffer here would raise the RSS every later child inherits at fork.
    subprocess.run(["cat", *map(str, sorted(src.glob("*.safetensors")))], stdout=subprocess.DEVNULL, check=True)


def run(cmd: list[str], output: Path, src: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and bytes written of one whole process (warm cache); output removed after."""
    shutil.rmtree(output, ignore_errors=True)
    warm(src)
    os.sync()  # start with no dirty pages left by the previous run's writes
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    written = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    shutil.rmtree(output, ignore_errors=True)
    return wall, usage.ru_maxrss * 1024, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="mid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where to write checkpoints (needs ~3.5x the source size)")
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path of mergekit-yaml, if installed")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dus-bench-"))
    src = work / "src"
    config = {**MISTRAL, **SCALES[args.scale]}
    if not (src / "config.json").is_file():
        print(f"synthesizing {args.scale} checkpoint in {src} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", SYNTHESIZE, str(src), json.dumps(config)], check=True)
    source_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    tools = {
        "dus": [sys.executable, "-m", "dus", "build", str(src), str(work / "out-dus"), "--overlap", "8", "--force"],
        "floor": [sys.executable, "-c", FLOOR, str(src), str(work / "out-floor")],
    }
    if args.mergekit:
        (work / "mergekit.yaml").write_text(mergekit_config(src, config["num_hidden_layers"], 8))
        tools["mergekit"] = [args.mergekit, str(work / "mergekit.yaml"), str(work / "out-mergekit"), "--copy-tokenizer",
                             "--lazy-unpickle", "--out-shard-size", "5B"]
    outputs = {name: work / f"out-{name}" for name in tools}
    results = {name: [] for name in tools}
    for name in tools:  # warm the page cache and the interpreters; not counted
        run(tools[name], outputs[name], src)
    for _ in range(args.repeats):
        for name in tools:
            results[name].append(run(tools[name], outputs[name], src))
    report(args, config, source_bytes, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({k: v for k, v in results.items()}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def report(args, config, source_bytes, results) -> None:
    import importlib.metadata as md

    def med(name, i):
        return statistics.median(r[i] for r in results[name])

    versions = {p: _version(md, p) for p in ("dus", "torch", "transformers", "safetensors", "mergekit")}
    print(f"\n### `{args.scale}` — {time.strftime('%Y-%m-%d')}, {platform.node() or 'machine'}: {os.cpu_count()} CPUs, "
          f"{platform.machine()}, Python {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"\nsource {source_bytes / 1e9:.2f} GB ({config['num_hidden_layers']} layers), median of {args.repeats} "
          "alternating runs, warm page cache\n")
    print("| tool | wall (s), median | wall (s), min–max | peak RSS (MiB) | output (GB) | wall vs floor | dus speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in results:
        wall, rss, written = med(name, 0), med(name, 1), med(name, 2)
        low, high = min(r[0] for r in results[name]), max(r[0] for r in results[name])
        print(f"| {name} | {wall:.2f} | {low:.2f}–{high:.2f} | {rss / 2**20:.0f} | {written / 1e9:.2f} "
              f"| {wall / med('floor', 0):.2f}× | {wall / med('dus', 0):.2f}× |")


def _version(md, package):
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
