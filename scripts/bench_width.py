"""Time and peak memory of width growth and the computed initialisers (docs/benchmarks.md).

    python scripts/bench_width.py --workdir /tmp/bench-width [--smollm2 DIR] [--synthetic-layers 2 4]

Each case: `dus plan` first (transformers' checks answered once and remembered), then `dus build`
and `dus verify` as whole processes: wall seconds and peak RSS (ru_maxrss of the process). The
synthetic sources have the Mistral-7B shape (configs/mistral-7b-v0.1.json) with fewer layers and
zero values: the cost is per tensor, so peak RSS must not grow with the layer count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DUS = [sys.executable, "-m", "dus"]


def timed(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()[-2000:]
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss * 1024


def case(name: str, source: Path, out: Path, options: list[str]) -> dict:
    subprocess.run([*DUS, "plan", str(source), *options], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(out, ignore_errors=True)
    build_s, build_rss = timed([*DUS, "build", str(source), str(out), *options])
    written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    verify_s, verify_rss = timed([*DUS, "verify", str(out)])
    shutil.rmtree(out, ignore_errors=True)
    source_bytes = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    row = {
        "case": name,
        "options": " ".join(options),
        "source_bytes": source_bytes,
        "output_bytes": written,
        "build_s": round(build_s, 1),
        "build_peak_rss_mib": build_rss >> 20,
        "verify_s": round(verify_s, 1),
        "verify_peak_rss_mib": verify_rss >> 20,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--smollm2", default=None, help="SmolLM2-135M-Instruct directory (scripts/fetch_smollm2.py)")
    parser.add_argument("--synthetic-layers", type=int, nargs="*", default=[])
    parser.add_argument("--smollm2-cases", nargs="*", default=["width", "noise", "aligned-average", "predicted"])
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.smollm2:
        src = Path(args.smollm2)
        if "width" in args.smollm2_cases:
            rows.append(case("SmolLM2-135M x2 width", src, work / "out", ["--width", "2"]))
        if "noise" in args.smollm2_cases:
            rows.append(
                case("SmolLM2-135M x2 width + noise", src, work / "out", ["--width", "2", "--width-noise", "0.01"])
            )
        for init in ("aligned-average", "predicted"):
            if init not in args.smollm2_cases:
                continue
            rows.append(
                case(
                    f"SmolLM2-135M +6 layers {init}",
                    src,
                    work / "out",
                    ["--insert-at", "top-half", "--new-layers", "6", "--init", init],
                )
            )
    for layers in args.synthetic_layers:
        from dus.testing.synthetic import write_synthetic

        src = work / f"mistral-shape-{layers}"
        config = json.loads((ROOT / "configs/mistral-7b-v0.1.json").read_text())
        write_synthetic(src, {**config, "num_hidden_layers": layers})
        rows.append(case(f"Mistral-7B shape, {layers} layers, x2 width", src, work / "out", ["--width", "2"]))
        shutil.rmtree(src)
    (work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
