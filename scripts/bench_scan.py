#!/usr/bin/env python3
"""Benchmark `dus scan` against the naive way, on SmolLM2-135M-Instruct (30 layers: 465 single-block plans).

In one run:
  1. the naive way on a sample of plans: `dus build SRC OUT --layers SPEC`, then `dus eval OUT --perplexity TEXT
     --max-tokens 2048` (each a fresh process: plan check, copy, load, evaluate), timed per plan;
  2. `dus scan SRC --text TEXT --max-tokens 2048 --probe general.jsonl --report-on accuracy:heldout
     --probe heldout.jsonl` over the whole single-block space, timed, with its peak RSS (wait4's ru_maxrss);
  3. the scan's perplexity of each sampled plan against the naive one (relative difference);
  4. the best plan against the base on a held-out text (other pydoc topics), through dus.load_grown.
The text is Python's pydoc_data.topics (dus.eval.perplexity.reference_text), first 2,048 tokens; windows of
512 tokens (dus eval's default). Prints Markdown with the machine, load (uptime) before and after, and versions.

    python scripts/bench_scan.py --work /tmp/bench-scan [--sample 5] [--timeout 3600] [--budget N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

GENERAL = [  # general knowledge and language: scored for every plan (not used to rank)
    ("The capital of France is", [" Paris", " Berlin", " Madrid"], 0),
    ("Water freezes at zero degrees", [" Celsius", " Fahrenheit"], 0),
    ("The opposite of hot is", [" cold", " red", " fast"], 0),
    ("A week has seven", [" days", " years", " cats"], 0),
    ("The sun rises in the", [" east", " west"], 0),
    ("Cats and dogs are", [" animals", " planets", " numbers"], 0),
    ("She opened the door and walked", [" inside", " purple", " seven"], 0),
    ("Two plus two equals", [" four", " five", " three"], 0),
    ("The largest ocean on Earth is the", [" Pacific", " Arctic"], 0),
    ("Bees make", [" honey", " milk", " glass"], 0),
    ("In Python, a list is written with square", [" brackets", " apples"], 0),
    ("The color of the clear daytime sky is", [" blue", " green", " black"], 0),
]
HELDOUT = [  # held out: measured for the base and the top plans only
    ("The chemical symbol for gold is", [" Au", " Ag", " Fe"], 0),
    ("Ice is the solid form of", [" water", " air", " fire"], 0),
    ("The first month of the year is", [" January", " June", " October"], 0),
    ("Birds can fly because they have", [" wings", " wheels", " roots"], 0),
    ("A triangle has three", [" sides", " wheels", " colors"], 0),
    ("The Earth orbits the", [" Sun", " Moon"], 0),
    ("To print text in Python you call", [" print", " draw", " shout"], 0),
    ("A baby cat is called a", [" kitten", " puppy", " calf"], 0),
    ("The plural of mouse is", [" mice", " mouses", " moose"], 0),
    ("Ten minus three is", [" seven", " six", " eight"], 0),
    ("Fish live in", [" water", " trees", " deserts"], 0),
    ("Night follows", [" day", " winter", " lunch"], 0),
]


def run(cmd: list[str], timeout: float | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS KiB of the child from wait4, result with .cpu_s = user + system seconds); past `timeout`
    the child gets SIGTERM. CPU seconds are what to compare on a machine shared with other work."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.terminate) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.time() - start
        if timer:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        result = subprocess.CompletedProcess(cmd, code, out.read(), err.read())
        result.cpu_s = usage.ru_utime + usage.ru_stime
        return seconds, usage.ru_maxrss, result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_inputs(work: Path) -> dict[str, Path]:
    from pydoc_data.topics import topics

    from dus.eval.perplexity import reference_text

    work.mkdir(parents=True, exist_ok=True)
    keys = sorted(topics)
    paths = {
        "text": work / "topics.txt",
        "heldout_text": work / "heldout.txt",
        "general": work / "general.jsonl",
        "heldout": work / "heldout.jsonl",
    }
    paths["text"].write_text(reference_text(), encoding="utf-8")
    paths["heldout_text"].write_text(reference_text(topics=keys[len(keys) // 2 :]), encoding="utf-8")
    for name, items in (("general", GENERAL), ("heldout", HELDOUT)):
        paths[name].write_text(
            "".join(json.dumps({"context": c, "choices": ch, "answer": a}) + "\n" for c, ch, a in items),
            encoding="utf-8",
        )
    return paths


def naive(src: Path, paths: dict, specs: list[str], work: Path, dus: list[str]) -> list[dict]:
    rows = []
    for spec in specs:
        out = work / f"naive-{spec.replace(':', '-').replace(',', '_')}"
        build_s, build_rss, b = run([*dus, "build", str(src), str(out), "--layers", spec, "--force"])
        assert b.returncode == 0, b.stderr
        eval_s, eval_rss, e = run(
            [
                *dus,
                "eval",
                str(out),
                "--perplexity",
                str(paths["text"]),
                "--max-tokens",
                "2048",
                "--device",
                "cpu",
                "--output",
                str(out / "eval"),
            ]
        )
        assert e.returncode == 0, e.stderr
        ppl = json.loads((out / "eval" / "perplexity.json").read_text())["perplexity"]
        rows.append(
            {
                "layers": spec,
                "build_s": build_s,
                "eval_s": eval_s,
                "cpu_s": b.cpu_s + e.cpu_s,
                "perplexity": ppl,
                "rss_kib": max(build_rss, eval_rss),
                "uptime": uptime(),
            }
        )
    return rows


def heldout_check(src: Path, best: str, text: Path) -> dict:
    from dus.eval.perplexity import perplexity
    from dus.grown import load_grown
    from dus.runtime import load_model, load_tokenizer

    tok = load_tokenizer(src)
    base, _ = load_model(src, "cpu", "float32")
    grown = load_grown(str(src), best, device="cpu", dtype="float32")
    body = text.read_text(encoding="utf-8")
    return {
        "base": perplexity(base, tok, body, max_tokens=2048)["perplexity"],
        "best": perplexity(grown, tok, body, max_tokens=2048)["perplexity"],
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _versions() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-scan"))
    ap.add_argument("--sample", type=int, default=5, help="plans built and evaluated the naive way")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    from dus.testing.fetch import fetch_smollm2

    src = fetch_smollm2()
    paths = write_inputs(args.work)
    dus = [sys.executable, "-m", "dus"]
    before = uptime()
    # repeated blocks of 14, 2, 30, 1 and 6 layers: 10.6 on average, as the whole space's (n + 2) / 3 = 10.7
    specs = ["0:22,8:30", "0:16,14:30", "0:30,0:30", "0:10,9:30", "0:26,20:30"][: args.sample]
    print("uptime before:", before, flush=True)
    rows = [] if args.skip_naive else naive(src, paths, specs, args.work, dus)
    scan_cmd = [
        *dus,
        "scan",
        str(src),
        "--text",
        str(paths["text"]),
        "--max-tokens",
        "2048",
        "--probe",
        str(paths["general"]),
        "--probe",
        str(paths["heldout"]),
        "--report-on",
        "accuracy:heldout",
        "--device",
        "cpu",
        "--out",
        str(args.work / "scan"),
    ]
    if args.budget:
        scan_cmd += ["--budget", str(args.budget)]
    scan_s, scan_rss, r = run(scan_cmd, timeout=args.timeout)
    scan_cpu = r.cpu_s
    after = uptime()
    record = json.loads((args.work / "scan" / "scan.json").read_text())
    missing = [spec for spec in specs if spec not in {p["layers"] for p in record["plans"]}]
    if rows and missing and record["complete"]:  # score the naive sample too (same settings: scan.json resumes)
        extra = [*dus, "scan", *scan_cmd[scan_cmd.index("scan") + 1 :]]
        extra = [a for k, a in enumerate(extra) if not (a == "--budget" or extra[k - 1] == "--budget")]
        _, _, r2 = run(extra + [f"--layers={spec}" for spec in missing], timeout=args.timeout)
        record = json.loads((args.work / "scan" / "scan.json").read_text())
    by_spec = {p["layers"]: p for p in record["plans"]}
    for row in rows:
        scanned = by_spec.get(row["layers"], {}).get("scores", {}).get("perplexity")
        row["scan_perplexity"] = scanned
        row["relative_difference"] = None if scanned is None else abs(scanned - row["perplexity"]) / row["perplexity"]
    per_plan = scan_s / max(1, len(record["plans"]) + 1)  # the base is scored as a plan too
    naive_per_plan = sum(row["build_s"] + row["eval_s"] for row in rows) / len(rows) if rows else None
    result = {
        "machine": _cpu_model(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout,
        "versions": _versions(),
        "scan_seconds_per_plan": per_plan,
        "naive_seconds_per_plan": naive_per_plan,
        "speedup_per_plan": naive_per_plan / per_plan if naive_per_plan else None,
        "cpus": os.cpu_count(),
        "uptime_before": before,
        "uptime_after": after,
        "scan_seconds": scan_s,
        "scan_cpu_s": scan_cpu,
        "scan_rss_kib": scan_rss,
        "scan_returncode": r.returncode,
        "scan_complete": record["complete"],
        "plans_scored": len(record["plans"]),
        "naive": rows,
        "base": record["base"],
        "top": record["plans"][:10],
        "scan_stderr_tail": r.stderr[-2000:],
    }
    if record["complete"] and record["plans"]:
        result["heldout_text"] = heldout_check(src, record["plans"][0]["layers"], paths["heldout_text"])
    (args.work / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "top"}, indent=1))


if __name__ == "__main__":
    main()
