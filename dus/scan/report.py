"""A scan's outputs: scan.json (rewritten atomically after every batch), the ranked table, the heat map."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from dus.errors import InputError
from dus.scan.score import lower_is_better

SCAN_FILE = "scan.json"
HEATMAP_FILE = "heatmap.png"


def write_json(path: Path, record: dict) -> None:
    """Whole or absent after a crash (temp file, fsync, rename)."""
    from dus.core.publish import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def read_previous(out: Path, settings: dict, force: bool) -> dict[str, dict]:
    """Scores by plan spec of an earlier run into OUT with the same settings (resume), else nothing."""
    path = out / SCAN_FILE
    if not path.is_file() or force:
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not a scan record ({e}); use --force to start over") from None
    if record.get("settings") != settings:
        changed = sorted(k for k in settings if record.get("settings", {}).get(k) != settings[k])
        raise InputError(
            f"{path} holds a scan with other settings ({', '.join(changed) or 'format'}); "
            "use another --out, or --force to start over"
        )
    try:
        done = {_key(p): _scores(p) for p in record.get("plans", [])}
        if record.get("base"):
            done[str(record["base"]["layers"])] = _scores(record["base"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{path} is not a scan record ({type(e).__name__}: {e}); use --force to start over") from None
    return done


def _scores(plan: dict) -> dict[str, float]:
    scores = dict(plan["scores"])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
        raise ValueError("a score is not a number")
    return scores


def _key(plan: dict) -> str:
    if "scale" in plan:
        return scaled_key(str(plan["layers"]), float(plan["scale"]), [str(m) for m in plan["scale_modules"]])
    return str(plan["layers"])


def scaled_key(spec: str, factor: float, modules: list[str]) -> str:
    """A scaled variant's key among the scores (a plan's is its spec): SPEC|FACTOR|MODULES."""
    return f"{spec}|{factor!r}|{','.join(modules)}"


def split_key(key: str) -> tuple[str, float | None, list[str]]:
    """(spec, factor, modules) of a key; factor None for a plain plan."""
    spec, _, rest = key.partition("|")
    if not rest:
        return spec, None, []
    factor, _, modules = rest.partition("|")
    return spec, float(factor), modules.split(",")


def better(name: str):
    low = lower_is_better(name)
    return lambda a, b: a < b if low else a > b


def ranked(plans: list[dict], name: str) -> list[dict]:
    sign = 1 if lower_is_better(name) else -1
    return sorted(plans, key=lambda p: sign * p["scores"].get(name, math.inf * sign))


def output_name(source: str, spec: str, factor: float | None = None) -> str:
    name = f"{Path(source).name or 'model'}-{spec.replace(':', '-').replace(',', '_')}"
    return name if factor is None else f"{name}-scale{factor:g}"


def build_command(source: str, spec: str, recipe: Path | None = None, factor: float | None = None) -> str:
    """The command that builds a plan; a scaled variant is built from its recipe file."""
    if recipe is not None:
        return f"dus build --config {recipe} {output_name(source, spec, factor)}"
    return f"dus build {source} {output_name(source, spec)} --layers {spec}"


def table(record: dict, select_on: str, top: int):
    """A rich Table of the base and the best `top` plans, each score with its change against the base."""
    from rich.table import Table

    names = [select_on] + sorted({k for p in record["plans"][:top] for k in p["scores"]} - {select_on})
    base = record["base"]["scores"]
    t = Table(title=f"{record['source']}: {len(record['plans'])} plans ranked by {select_on}")
    for column in ("rank", "layers", "depth", *names):
        t.add_column(column, justify="left" if column == "layers" else "right")
    t.add_row("base", record["base"]["layers"], str(record["num_layers"]), *[_value(base.get(k)) for k in names])
    for rank, plan in enumerate(record["plans"][:top], 1):
        cells = [_value(plan["scores"].get(k), base.get(k)) for k in names]
        layers = plan["layers"] + (f" ×{plan['scale']:g} repeats" if "scale" in plan else "")
        t.add_row(str(rank), layers, str(plan["num_layers"]), *cells)
    return t


def _value(value, base=None) -> str:
    if value is None:
        return "-"
    text = f"{value:.4f}"
    if base is not None:
        text += f" ({value - base:+.4f})"
    return text


def heatmap(record: dict, name: str, path: Path) -> Path | None:
    """The score's change against the base over (i, j) of the single-block plans: the picture researchers publish.
    Perplexity is drawn as log(perplexity / base), the change in nats per token, since it changes by factors."""
    import numpy as np

    from dus.analyze.plot import figure

    n = record["source_num_layers"]
    grid = np.full((n, n + 1), np.nan)
    base = record["base"]["scores"].get(name)
    for plan in record["plans"]:
        if plan.get("block") and name in plan["scores"] and base is not None:
            i, j = plan["block"]
            grid[i, j] = _change(name, plan["scores"][name], base)
    if np.isnan(grid).all():
        return None
    fig = figure(7.5, 6.5)
    ax = fig.subplots()
    # a few collapsed plans would wash out the rest: clip the colours at the 75th percentile of the changes
    limit = float(np.nanpercentile(np.abs(grid), 75)) or float(np.nanmax(np.abs(grid))) or 1.0
    clipped = bool(np.nanmax(np.abs(grid)) > limit)
    cmap = "RdBu_r" if lower_is_better(name) else "RdBu"  # blue is better either way
    image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    label = f"log({name} / base {base:.4g})" if lower_is_better(name) else f"{name} − base ({base:.4g})"
    fig.colorbar(image, ax=ax, label=label + (", colours clipped" if clipped else ""))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("j: the repeated block ends before layer j (first copy [0, j))")
    ax.set_ylabel("i: the repeated block starts at layer i (second copy [i, n))")
    ax.set_title(f"{Path(record['source']).name}: repeat layers [i, j) once")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _change(name: str, value: float, base: float) -> float:
    return math.log(value / base) if lower_is_better(name) else value - base
