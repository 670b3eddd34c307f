"""`dus scan` as a function: check the inputs, cache the base's prefixes, score the plans, write the results.

Everything that can be refused (probes, text, space, budget, score names, the
source) is refused before the model loads and before anything is written.
scan.json is rewritten atomically after every batch with "complete": false,
and a rerun with the same settings continues from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from dus.errors import InputError
from dus.scan import scaled
from dus.scan.options import ScanOptions
from dus.scan.report import (
    SCAN_FILE,
    better,
    build_command,
    heatmap,
    output_name,
    ranked,
    read_previous,
    scaled_key,
    split_key,
    write_json,
)
from dus.scan.score import PERPLEXITY
from dus.scan.space import block_of, layer_spec, make_space, prefix_length, search

FORMAT = 1


def scan(opts: ScanOptions, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score the plans; return (and write under --out) the scan record. progress(done, total) after each batch."""
    from dus.api import plan as check_plan
    from dus.runtime import check_weights, load_tokenizer

    start = time.time()
    if str(opts.source).endswith(".gguf"):
        raise InputError("dus scan needs a safetensors SOURCE: a GGUF's tensors are quantized")
    check_weights(opts.source)
    if not opts.text and not opts.probe:
        raise InputError("give --text FILE and/or --probe FILE.jsonl: something to score the plans on")
    if opts.batch_size < 1 or opts.top < 1:
        raise InputError("--batch-size and --top must be >= 1")
    names = [PERPLEXITY] * bool(opts.text) + [f"accuracy:{Path(p).stem}" for p in opts.probe]
    select, held_out = _score_names(names, opts.select_on, opts.report_on)
    # the check `dus build` runs: every source layer must build identically at another index (the stack twice)
    base = check_plan(opts.source, overlap=0).base
    n = base.num_layers
    factors = scaled.factors(opts.scale)
    scale_modules = scaled.modules(base, opts.scale_modules) if factors else []
    plans = make_space(opts.space, n, opts.layers, opts.max_block, opts.max_layers)
    if opts.budget is not None and opts.budget < len(plans) and any(block_of(p, n) is None for p in plans):
        raise InputError(
            f"the plan space has {len(plans)} plans, over --budget {opts.budget}; a budgeted search "
            "works on single-block spaces: raise --budget or list fewer --layers"
        )
    tokenizer = load_tokenizer(opts.source)
    data = _read_data(opts, tokenizer)
    settings = _settings(opts, n, names)
    out = Path(opts.out)
    done = read_previous(out, settings, opts.force)

    runner, device = _load(opts)
    cache = _capture(runner, data, opts, out, device)
    base_plan = tuple(range(n))
    state = {
        "done": done,
        "settings": settings,
        "n": n,
        "opts": opts,
        "complete": False,
        "start": start,
        "select_on": select[0],
    }
    total = len(plans) if opts.budget is None else min(opts.budget, len(plans))
    counter = {"done": 0, "total": total + 1 + min(opts.top, total) * len(factors)}

    def score(batch: list[tuple[int, ...]], wanted: list[str]) -> dict:
        return _score_plans(
            runner,
            cache,
            data,
            batch,
            wanted,
            done,
            opts.batch_size,
            lambda k: _advance(counter, k, progress, state, out),
        )

    score([base_plan], names if not held_out else [s for s in names if s not in held_out])

    def selection(batch: list[tuple[int, ...]]) -> dict:
        return {p: s[select[0]] for p, s in score(batch, select).items()}

    scored = search(plans, n, opts.budget, selection, better(select[0]))
    best = ranked([{"plan": p, "scores": done[layer_spec(p)]} for p in scored], select[0])[: opts.top]
    if held_out:
        score([base_plan] + [b["plan"] for b in best], held_out)
    for plan in [b["plan"] for b in best if scaled.repeated(b["plan"])]:
        for factor in factors:
            _score_scaled(runner, cache, data, plan, factor, scale_modules, names, done, opts.source, device)
            _advance(counter, 1, progress, state, out)
    state["complete"] = True
    record = _record(state)
    _write_recipes(record, out)
    write_json(out / SCAN_FILE, record)
    picture = heatmap(record, select[0], out / "heatmap.png") if any(p.get("block") for p in record["plans"]) else None
    record["files"] = {"scan": str(out / SCAN_FILE), **({"heatmap": str(picture)} if picture else {})}
    return record


def _score_scaled(runner, cache, data, plan, factor, modules, names, done, source, device) -> None:
    """Score the plan with its repeated positions' `modules` scaled by `factor` (dus/scan/scaled.py), unless done."""
    key = scaled_key(layer_spec(plan), factor, modules)
    if all(name in done.get(key, {}) for name in names):
        return
    weights = scaled.weights(source, plan, factor, modules, runner.model.dtype, device)
    j = prefix_length(plan)  # the repeats come after the shared prefix: the suffix's positions
    shifted = {position - j: tensors for position, tensors in weights.items()}
    done.setdefault(key, {}).update(_score_chunk(runner, cache, data, [j], plan[j:], names, shifted)[0])


def _score_names(names: list[str], select_on: str | None, report_on: list[str]) -> tuple[list[str], list[str]]:
    if len(set(names)) != len(names):
        raise InputError("two --probe files share a file stem: their scores would have one name")
    for name in [select_on, *report_on]:
        if name is not None and name not in names:
            raise InputError(f"no score named {name!r}: this scan measures {', '.join(names)}")
    candidates = [n for n in names if n not in report_on]
    select = select_on or (candidates[0] if candidates else None)
    if select is None or select in report_on:
        raise InputError("--select-on must name a score that is not held out by --report-on")
    return [select] + [n for n in names if n != select and n not in report_on], list(report_on)


def _read_data(opts: ScanOptions, tokenizer) -> dict:
    from dus.scan.score import read_probe, read_text, text_windows

    config_file = Path(opts.source) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    data = {"windows": None, "probes": []}
    if opts.text:
        data["windows"] = text_windows(tokenizer, read_text(opts.text), opts.window, opts.max_tokens)
    data["probes"] = [read_probe(p, tokenizer, limit if isinstance(limit, int) else None) for p in opts.probe]
    return data


def _settings(opts: ScanOptions, n: int, names: list[str]) -> dict:
    from dus.eval.results import model_fingerprint

    def digest(path: str) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

    return {
        "format": FORMAT,
        "source": str(opts.source),
        "source_fingerprint": model_fingerprint(opts.source),
        "num_layers": n,
        "text": opts.text,
        "text_sha256": digest(opts.text) if opts.text else None,
        "probes": {p: digest(p) for p in opts.probe},
        "window": opts.window,
        "max_tokens": opts.max_tokens,
        "dtype": opts.dtype,
        "scores": names,
    }


def _load(opts: ScanOptions):
    from dus.runtime import load_model
    from dus.scan.prefix import Runner

    model, device = load_model(opts.source, opts.device, opts.dtype, device_map=opts.device_map)
    return Runner(model), device


def _capture(runner, data: dict, opts: ScanOptions, out: Path, device) -> dict:
    """Every sequence's prefix, in memory under --memory, else in one file under --out (removed at the end)."""
    from dus.api import parse_size
    from dus.scan.prefix import batches
    from dus.scan.store import keep

    cap = parse_size(opts.memory)
    windows = [] if data["windows"] is None else [w[None].to(device) for w in data["windows"]]
    probes = [[_tensor(seq, device) for seq in probe.sequences] for probe in data["probes"]]
    prefixes = {
        "windows": [runner.capture(w) for w in windows],
        "probes": [[runner.capture(s) for s in seqs] for seqs in probes],
    }
    # which sequences run as one batch, decided on the base pass's arguments before they move to a file
    prefixes["window_batches"] = batches(prefixes["windows"])
    prefixes["probe_batches"] = [batches(ps) for ps in prefixes["probes"]]
    keep([p for p in prefixes["windows"]] + [p for ps in prefixes["probes"] for p in ps], cap, out)
    return prefixes


def _tensor(ids: list[int], device):
    import torch

    return torch.tensor([ids], dtype=torch.long, device=device)


def _score_plans(
    runner,
    cache: dict,
    data: dict,
    plans: list,
    wanted: list[str],
    done: dict,
    batch_size: int,
    advance: Callable[[int], None],
) -> dict:
    """{plan: {name: score}} for `wanted` scores; plans already in `done` are not run again. Up to `batch_size`
    plans with the same suffix after their shared prefix run as one batch, with every sequence of a length."""
    todo: dict[tuple, list] = {}
    for plan in plans:
        have = done.get(layer_spec(plan), {})
        if any(name not in have for name in wanted):
            j = prefix_length(plan)
            todo.setdefault(plan[j:], []).append(plan)
    for suffix, group in sorted(todo.items(), key=lambda kv: -len(kv[0])):
        for chunk in [group[k : k + batch_size] for k in range(0, len(group), batch_size)]:
            scores = _score_chunk(runner, cache, data, [prefix_length(p) for p in chunk], suffix, wanted)
            for plan, s in zip(chunk, scores):
                done.setdefault(layer_spec(plan), {}).update(s)
            advance(len(chunk))
    return {plan: done[layer_spec(plan)] for plan in plans}


def _score_chunk(
    runner, cache: dict, data: dict, starts: list[int], suffix: tuple, wanted: list[str], weights: dict | None = None
) -> list[dict]:
    """[{name: score}] of the plans hidden[j] + `suffix` for j in `starts`, run as one batch (`weights`: parameters
    replaced at suffix positions, Runner.hidden)."""
    from dus.scan.score import accuracy, perplexity

    scores: list[dict] = [{} for _ in starts]
    windows = cache["windows"]
    if PERPLEXITY in wanted:
        sums = _text_nll(runner, windows, cache["window_batches"], starts, suffix, weights)
        count = sum(prefix.input_ids.shape[1] - 1 for prefix in windows)
        for s, value in zip(scores, sums):
            s[PERPLEXITY] = perplexity(value, count)
    for probe, prefixes, groups in zip(data["probes"], cache["probes"], cache["probe_batches"]):
        if probe.name in wanted:
            lls = _choice_logliks(runner, probe, prefixes, groups, starts, suffix, weights)
            for s, ll in zip(scores, lls):
                s[probe.name] = accuracy(probe, ll)
    return scores


def _text_nll(runner, windows: list, groups: list[list[int]], starts: list[int], suffix: tuple, weights=None):
    """[plans] NLL summed over all windows, in window order as dus eval sums it. The head runs one plan's batch at
    a time (its logits, windows x T x vocab, are the largest tensor of a scan)."""
    from dus.scan.score import window_nll

    nll: dict[int, list] = {w: [None] * len(starts) for w in range(len(windows))}  # window -> plan -> NLL
    for group in groups:
        batch = [windows[w] for w in group]
        h = runner.hidden(batch, starts, suffix, weights)
        for k in range(len(starts)):
            logits = runner.head(h[k * len(batch) : (k + 1) * len(batch)], batch)
            for g, w in enumerate(group):
                nll[w][k] = window_nll(logits[g][None], windows[w].input_ids)[0]
    return [sum(nll[w][k] for w in range(len(windows))).item() for k in range(len(starts))]


def _choice_logliks(
    runner, probe, prefixes: list, groups: list[list[int]], starts: list[int], suffix: tuple, weights=None
):
    """[plans][sequence] log-likelihood of each sequence's choice tokens; only those positions reach the head."""
    from dus.scan.score import choice_loglik

    out = [[0.0] * len(prefixes) for _ in starts]
    for group in groups:
        batch = [prefixes[i] for i in group]
        keep = max(probe.choice_lengths[i] for i in group) + 1
        logits = runner.head(runner.hidden(batch, starts, suffix, weights), batch, keep)
        for k in range(len(starts)):
            for g, i in enumerate(group):
                length = probe.choice_lengths[i]
                row = logits[k * len(batch) + g, -(length + 1) :]
                out[k][i] = choice_loglik(row[None], prefixes[i].input_ids, length).item()
    return out


def _advance(counter: dict, k: int, progress, state: dict, out: Path) -> None:
    counter["done"] += k
    write_json(out / SCAN_FILE, _record(state))
    if progress:
        progress(min(counter["done"], counter["total"]), counter["total"])


def _record(state: dict) -> dict:
    """The scan.json object: base first, then every scored plan, ranked by the selection score when complete."""
    opts, n, done = state["opts"], state["n"], state["done"]
    base_spec = layer_spec(tuple(range(n)))
    from dus.plan.recipes import parse_layer_spec

    plans = []
    for key, scores in done.items():
        if key == base_spec:
            continue
        spec, factor, modules = split_key(key)
        plan = tuple(parse_layer_spec(spec, n))
        block = block_of(plan, n) if factor is None else None  # the heat map draws plain plans
        scale = {} if factor is None else {"scale": factor, "scale_modules": modules}
        entry = {"layers": spec, **scale, "num_layers": len(plan), **({"block": list(block)} if block else {})}
        plans.append({**entry, "scores": scores})
    name = state["select_on"]
    plans = ranked(plans, name)
    record = {
        "format": FORMAT,
        "source": str(opts.source),
        "source_num_layers": n,
        "num_layers": n,
        "complete": state["complete"],
        "select_on": name,
        "report_on": list(opts.report_on),
        "settings": state["settings"],
        "seconds": round(time.time() - state["start"], 1),
        "base": {"layers": base_spec, "scores": done.get(base_spec, {})},
        "plans": plans,
    }
    if state["complete"]:
        record["build"] = [
            build_command(
                str(opts.source), p["layers"], _recipe_path(Path(opts.out), str(opts.source), p), p.get("scale")
            )
            for p in plans[:3]
        ]
    return record


def _recipe_path(out: Path, source: str, plan: dict) -> Path | None:
    return out / "recipes" / f"{output_name(source, plan['layers'], plan['scale'])}.yml" if "scale" in plan else None


def _write_recipes(record: dict, out: Path) -> None:
    """The recipe file of each scaled variant among the build commands."""
    from dus.core.publish import atomic_write_text
    from dus.plan.recipes import parse_layer_spec

    for plan in record["plans"][:3]:
        path = _recipe_path(out, record["source"], plan)
        if path is not None:
            layers = tuple(parse_layer_spec(plan["layers"], record["source_num_layers"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, scaled.recipe_text(record["source"], layers, plan["scale"], plan["scale_modules"]))
