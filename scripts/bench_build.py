#!/usr/bin/env python3
"""Benchmark `dus build` against mergekit's passthrough merge and a byte-copy floor.

Synthesizes a Mistral-shaped checkpoint (`mid`: hidden 2048, intermediate 7168,
32 layers, ~1.9B parameters, bf16; `7b`: the Mistral-7B shape; `tiny`: 84 MB, to
try the script), then times, in one run and alternating, each whole process
building the SOLAR DUS stack (overlap 8, slices [0,24] + [8,32]):
  - dus:               python -m dus build SRC OUT --overlap 8 (BLAKE3 of every shard),
                       the plan's transformers checks answered from dus's cache, as
                       after `dus plan` or an earlier build of the plan (the warm-up run)
  - dus, first build:  the same with an empty check cache each run: transformers
                       checks the plan in a child process beside the copy
  - dus --file-sha256: the first, recording SHA-256 instead (with --dus-sha256)
  - mergekit:          mergekit-yaml passthrough with its default options, and
    mergekit tuned:    with --lazy-unpickle --out-shard-size 5B (when --mergekit points at it)
  - floor:             a minimal process copying exactly the output's tensor byte
                       ranges with os.copy_file_range, no header parsing, no hashing
Reports median wall time and peak RSS (ru_maxrss from wait4; this script never
imports torch, so a child's figure is its own) and the ratios, as Markdown,
under a header naming the CPU and its measured SHA-256, BLAKE3 and page-cache
copy throughput (`--machine` prints only that).

    python scripts/bench_build.py --scale mid --repeats 3 --mergekit /path/to/mergekit-yaml
    python scripts/bench_build.py --machine

Do not edit dus's files while it runs: the check cache's key covers them, so an
edit turns the `dus` rows into first builds.
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
    "tiny": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=32, num_attention_heads=8, num_key_value_heads=4
    ),
    "mid": dict(
        hidden_size=2048, intermediate_size=7168, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=8
    ),
    "7b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
}
MISTRAL = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}

SYNTHESIZE = """
import json, sys
from dus.testing.synthetic import write_synthetic
print(write_synthetic(sys.argv[1], json.loads(sys.argv[2]), "bfloat16"))
"""

# The floor: the same output bytes, moved the cheapest way, planned from the same headers.
# FLOOR_COPY copies `specs` (byte copies) into OUTPUT = sys.argv[2]; scripts/bench_upcycle.py plans its own.
FLOOR_PLAN = textwrap.dedent("""
    import os, sys
    from dus.plan.layout import layout
    from dus.plan.make import make_plan
    from dus.plan.options import PlanOptions
    from dus.read.source import open_source
    from dus.write.shards import split_shards
    # the plan from headers alone: none of the build's checks (transformers, in a child process)
    sources = {"base": open_source(sys.argv[1])}
    specs = layout(make_plan(sources, PlanOptions(source=sys.argv[1], overlap=8)), sources)
""")
FLOOR_COPY = textwrap.dedent("""
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
FLOOR = FLOOR_PLAN + FLOOR_COPY


# This machine's speeds, measured in a child (a buffer here would raise every later child's
# ru_maxrss): one thread hashing a hot 1 MiB buffer, then 1 MiB reads of a file in the page
# cache as `dus build` hashes, and the kernel's copy of that file, as the floor copies.
MACHINE = textwrap.dedent("""
    import hashlib, json, os, statistics, sys, time
    import blake3
    path, size = sys.argv[1], int(sys.argv[2])
    block = os.urandom(2**20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    view = memoryview(bytearray(block))

    def hot(new):
        h, start = new(), time.perf_counter()
        for _ in range(size // len(view)):
            h.update(view)
        return size / (time.perf_counter() - start)

    def cached(new):
        fd, h, position, start = os.open(path, os.O_RDONLY), new(), 0, time.perf_counter()
        while got := os.preadv(fd, [view], position):
            h.update(view[:got])
            position += got
        os.close(fd)
        return size / (time.perf_counter() - start)

    def copy(_):
        src, dst = os.open(path, os.O_RDONLY), os.open(path + ".copy", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        start, left = time.perf_counter(), size
        while left:
            left -= os.copy_file_range(src, dst, left)
        took = time.perf_counter() - start
        os.close(src), os.close(dst), os.unlink(path + ".copy")
        return size / took

    try:
        runs = {"sha256": (hot, hashlib.sha256), "blake3": (hot, blake3.blake3), "copy": (copy, None),
                "sha256 cached": (cached, hashlib.sha256), "blake3 cached": (cached, blake3.blake3)}
        print(json.dumps({name: statistics.median(what(new) for _ in range(3)) / 1e9
                          for name, (what, new) in runs.items()}))
    finally:
        os.unlink(path)
""")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_machine(work: Path, size: int = 512 * 2**20) -> str:
    """One line: the CPU and its measured hash and copy throughput (GB/s, median of 3)."""
    where = Path("/dev/shm") if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 4 * size else work
    out = subprocess.run(
        [sys.executable, "-c", MACHINE, str(where / f"dus-bench-{os.getpid()}.bin"), str(size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    speed = json.loads(out)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu_model()}, {cpus} usable CPUs: SHA-256 {speed['sha256']:.2f} GB/s "
        f"({speed['sha256 cached']:.2f} reading the page cache), BLAKE3 {speed['blake3']:.2f} GB/s "
        f"({speed['blake3 cached']:.2f}), one thread each; copy_file_range {speed['copy']:.2f} GB/s "
        f"(file to file within {'tmpfs' if where == Path('/dev/shm') else where}); median of 3"
    )


def checkpoint_bytes(config: dict, layers: int) -> int:
    """bf16 bytes of a Mistral-shaped checkpoint with `layers` decoder layers."""
    h = config["hidden_size"]
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * config["intermediate_size"] + 2 * h
    return 2 * (2 * config["vocab_size"] * h + h + layers * layer)


def check_free_space(work: Path, config: dict, have_source: bool) -> None:
    """The source (unless written already) and one output at a time: each run's output is removed after it."""
    n = config["num_hidden_layers"]
    need = (0 if have_source else checkpoint_bytes(config, n)) + checkpoint_bytes(config, 2 * (n - 8))
    free = shutil.disk_usage(work).free
    if free < need * 1.05:
        raise SystemExit(f"{work} has {free / 1e9:.1f} GB free; this scale needs {need * 1.05 / 1e9:.1f} GB")


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


def run(cmd: list[str], output: Path, src: Path, cache: Path, fresh_cache: bool) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and bytes written of one whole process (warm page cache) and the
    processes it started; output removed after. `cache`: the DUS_CHECK_CACHE, emptied first if fresh_cache."""
    shutil.rmtree(output, ignore_errors=True)
    if fresh_cache:
        shutil.rmtree(cache, ignore_errors=True)
    warm(src)
    os.sync()  # start with no dirty pages left by the previous run's writes
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "DUS_CHECK_CACHE": str(cache)}
    )
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
    parser.add_argument(
        "--workdir",
        default=None,
        help="where to write checkpoints (the source and one output at a time: ~2.5x the source; checked first)",
    )
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path of mergekit-yaml, if installed")
    parser.add_argument("--dus-sha256", action="store_true", help="also time dus build --file-sha256")
    parser.add_argument(
        "--machine", action="store_true", help="only measure and print this machine's hash and copy speeds"
    )
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.machine:
        print(measure_machine(work))
        return
    src = work / "src"
    config = {**MISTRAL, **SCALES[args.scale]}
    check_free_space(work, config, (src / "config.json").is_file())
    machine = measure_machine(work)
    if not (src / "config.json").is_file():
        print(f"synthesizing {args.scale} checkpoint in {src} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", SYNTHESIZE, str(src), json.dumps(config)], check=True)
    source_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))

    def out(name: str) -> str:  # "mergekit tuned" -> WORK/out-mergekit-tuned
        return str(work / ("out-" + "-".join(name.replace("-", " ").split())))

    dus = [sys.executable, "-m", "dus", "build", str(src)]
    tools = {
        "dus": [*dus, out("dus"), "--overlap", "8", "--force"],
        "dus, first build": [*dus, out("dus, first build"), "--overlap", "8", "--force"],
        "floor": [sys.executable, "-c", FLOOR, str(src), out("floor")],
    }
    if args.dus_sha256:
        tools["dus --file-sha256"] = [*dus, out("dus --file-sha256"), "--overlap", "8", "--force", "--file-sha256"]
    if args.mergekit:  # its defaults (as users run it: MergeOptions copy the tokenizer, 5B shards), then tuned
        yaml = work / "mergekit.yaml"
        yaml.write_text(mergekit_config(src, config["num_hidden_layers"], 8))
        tools["mergekit"] = [args.mergekit, str(yaml), out("mergekit")]
        tools["mergekit tuned"] = [
            args.mergekit,
            str(yaml),
            out("mergekit tuned"),
            "--copy-tokenizer",
            "--lazy-unpickle",
            "--out-shard-size",
            "5B",
        ]
    outputs = {name: Path(out(name)) for name in tools}
    results = {name: [] for name in tools}
    cache = work / "dus-cache"  # dus's check cache (dus/checks/cache.py): the first warm-up run fills it
    fresh = {name: name == "dus, first build" for name in tools}
    shutil.rmtree(cache, ignore_errors=True)
    for name in tools:  # warm the page cache and the interpreters; not counted
        run(tools[name], outputs[name], src, cache, fresh[name])
    for _ in range(args.repeats):
        for name in tools:
            results[name].append(run(tools[name], outputs[name], src, cache, fresh[name]))
    shutil.rmtree(cache, ignore_errors=True)
    report(args, config, source_bytes, results, machine)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, **results}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def report(args, config, source_bytes, results, machine: str) -> None:
    import importlib.metadata as md

    def med(name, i):
        return statistics.median(r[i] for r in results[name])

    versions = {p: _version(md, p) for p in ("dus", "torch", "transformers", "safetensors", "blake3", "mergekit")}
    print(
        f"\n### `{args.scale}` — {time.strftime('%Y-%m-%d')}, {platform.node() or 'machine'}: {os.cpu_count()} CPUs, "
        f"{platform.machine()}, Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    )
    print(f"\n{machine}")
    print(
        f"\nsource {source_bytes / 1e9:.2f} GB ({config['num_hidden_layers']} layers), median of {args.repeats} "
        "alternating runs, warm page cache\n"
    )
    print(
        "| tool | wall (s), median | wall (s), min–max | peak RSS (MiB) | output (GB) | wall vs floor | dus speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in results:
        wall, rss, written = med(name, 0), med(name, 1), med(name, 2)
        low, high = min(r[0] for r in results[name]), max(r[0] for r in results[name])
        print(
            f"| {name} | {wall:.2f} | {low:.2f}–{high:.2f} | {rss / 2**20:.0f} | {written / 1e9:.2f} "
            f"| {wall / med('floor', 0):.2f}× | {wall / med('dus', 0):.2f}× |"
        )


def _version(md, package):
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
