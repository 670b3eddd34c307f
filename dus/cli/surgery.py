"""`dus plan`, `dus build`, `dus verify`: layer surgery from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import filesize

from dus.cli import app

_PLAN_HELP = "Plan options (the defaults come from --config or --preset when given)"


def _plan_options(overlap, layers, recipe, factor, group, new_layers, dtype, preset, config, allow_index_dependent,
                  stack) -> dict:
    return dict(overlap=overlap, layers=layers, recipe=recipe, factor=factor, group=group, new_layers=new_layers,
                dtype=dtype, preset=preset, config=config, allow_index_dependent=allow_index_dependent, stack=stack)


def _warn_index_dependent(differences: list[str]) -> None:
    for difference in differences:
        print(f"warning: {difference}", file=sys.stderr)


# Shared plan options, declared once and reused by plan and build.
OVERLAP = typer.Option(None, "--overlap", help="SOLAR DUS: drop the last M layers of copy one and the first M of copy two [default: 8].", rich_help_panel=_PLAN_HELP)
LAYERS = typer.Option(None, "--layers", help="Explicit stack of source layers: half-open ranges and indices, e.g. 0:24,8:32 or 0:8,7,7,8:16.", rich_help_panel=_PLAN_HELP)
RECIPE = typer.Option(None, "--recipe", help="dus | stack | interleave | idus | expand | layers.", rich_help_panel=_PLAN_HELP)
FACTOR = typer.Option(None, "--factor", help="stack / interleave: growth factor G [default: 2].", rich_help_panel=_PLAN_HELP)
GROUP = typer.Option(None, "--group", help="idus: layers per group K [default: 8].", rich_help_panel=_PLAN_HELP)
NEW_LAYERS = typer.Option(None, "--new-layers", help="expand: number of zero-initialised identity blocks to insert.", rich_help_panel=_PLAN_HELP)
DTYPE = typer.Option(None, "--dtype", help="auto | bfloat16 | float16 | float32 [default: auto, keep the source's].", rich_help_panel=_PLAN_HELP)
PRESET = typer.Option(None, "--preset", help="A published recipe: solar (SOLAR-10.7B from Mistral-7B).", rich_help_panel=_PLAN_HELP)
CONFIG = typer.Option(None, "--config", help="A YAML recipe file (see docs/recipes.md).", rich_help_panel=_PLAN_HELP)
STACK = typer.Option(None, "--stack", help="PREFIX[:CONFIG]: the numbered tensor-name prefix to grow where the checkpoint holds several stacks (a language model beside a vision tower), and the nested config counting its layers when the count cannot tell (see docs/recipes.md).", rich_help_panel=_PLAN_HELP)
_MOE_HELP = "Experts (sparse upcycling: docs/upcycle.md)"
EXPERTS = typer.Option(None, "--experts", help="Also grow every layer's MLP into E experts and a router (dense -> MoE).", rich_help_panel=_MOE_HELP)
TOP_K = typer.Option(None, "--top-k", help="Experts each token uses K (1..E) [default: 2].", rich_help_panel=_MOE_HELP)
EXPERT_INIT = typer.Option(None, "--expert-init", help="copy | drop | split | noise [default: copy, which keeps the function].", rich_help_panel=_MOE_HELP)
EXPERT_SEED = typer.Option(None, "--expert-seed", help="Seed of the router and of drop/noise draws [default: 0].", rich_help_panel=_MOE_HELP)
DROP_RATIO = typer.Option(None, "--drop-ratio", help="--expert-init drop: share of each expert's neurons re-initialised [default: 0.5].", rich_help_panel=_MOE_HELP)
NOISE_SCALE = typer.Option(None, "--noise-scale", help="--expert-init noise: noise std as a multiple of each matrix's std [default: 0.01].", rich_help_panel=_MOE_HELP)
CALIBRATION = typer.Option(None, "--calibration", help="--expert-init split: group neurons that fire together on this text file, not by position.", rich_help_panel=_MOE_HELP)


def _expert_options(experts, top_k, expert_init, expert_seed, drop_ratio, noise_scale, calibration) -> dict:
    return dict(experts=experts, top_k=top_k, expert_init=expert_init, expert_seed=expert_seed,
                drop_ratio=drop_ratio, noise_scale=noise_scale, calibration=calibration)


ALLOW_INDEX = typer.Option(False, "--allow-index-dependent", help="Build even where the architecture computes part of a layer from its index (the copies then differ from their sources); recorded in dus_plan.json and the model card.", rich_help_panel=_PLAN_HELP)


@app.command("plan")
def plan_command(
    source: Optional[str] = typer.Argument(None, help="Model directory, Hub repo id, a .gguf file, or a bare config.json."),
    overlap: Optional[int] = OVERLAP, layers: Optional[str] = LAYERS, recipe: Optional[str] = RECIPE,
    factor: Optional[int] = FACTOR, group: Optional[int] = GROUP, new_layers: Optional[int] = NEW_LAYERS,
    dtype: Optional[str] = DTYPE, preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG,
    allow_index_dependent: bool = ALLOW_INDEX, stack: Optional[str] = STACK,
    experts: Optional[int] = EXPERTS, top_k: Optional[int] = TOP_K, expert_init: Optional[str] = EXPERT_INIT,
    expert_seed: Optional[int] = EXPERT_SEED, drop_ratio: Optional[float] = DROP_RATIO,
    noise_scale: Optional[float] = NOISE_SCALE, calibration: Optional[str] = CALIBRATION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the layer map to this PNG file."),
):
    """Show what a build would write: the layer map, layer and parameter counts, output bytes.

    Reads only config.json and safetensors headers, never the weights.
    """
    import dus.api

    resolved = dus.api.plan(source, **_plan_options(overlap, layers, recipe, factor, group, new_layers, dtype, preset,
                                                    str(config) if config else None, allow_index_dependent, stack),
                               **_expert_options(experts, top_k, expert_init, expert_seed, drop_ratio, noise_scale,
                                                calibration))
    _warn_index_dependent(resolved.index_dependent)
    if plot:
        from dus.plan.plot import plot_plan

        plot_plan(resolved.plan, resolved.base.num_layers, plot)
    if as_json:
        print(json.dumps(resolved.to_json(), indent=2))
        return
    print(format_plan(resolved))


def format_plan(resolved) -> str:
    info = resolved.to_json()
    lines = [f"source:      {info['source']}  ({info['source_num_layers']} layers, {info['source_num_parameters']:,} parameters)",
             "recipe:      " + ", ".join(f"{k}={v}" for k, v in info["recipe"].items()),
             f"output:      {info['num_layers']} layers, {info['num_parameters']:,} parameters, "
             f"{filesize.decimal(info['output_bytes'])} ({info['output_bytes']:,} bytes), dtype {info['dtype']}",
             "layer map (output <- source):"]
    if "moe" in info:  # upcycled: the expert layout before the layer map
        from dus.plan.upcycle import summary_lines

        lines[-1:-1] = summary_lines(info["moe"])
    for out_range, src_text in _runs(resolved.plan.layers):
        lines.append(f"  {out_range:>9}  <-  {src_text}")
    return "\n".join(lines)


def _runs(layers):
    """Group consecutive plain copies of consecutive source layers: 0-23 <- base 0-23 (copy)."""
    runs = []
    for i, layer in enumerate(layers):
        simple = len(layer.inputs) == 1 and not layer.edits
        if (runs and simple and runs[-1]["simple"] and runs[-1]["source"] == layer.source
                and runs[-1]["src_end"] + 1 == layer.source_layer and runs[-1]["end"] + 1 == i):
            runs[-1].update(end=i, src_end=layer.source_layer)
            continue
        runs.append({"start": i, "end": i, "src_start": layer.source_layer, "src_end": layer.source_layer,
                     "source": layer.source, "simple": simple, "layer": layer})
    for run in runs:
        out = f"{run['start']}" if run["start"] == run["end"] else f"{run['start']}-{run['end']}"
        layer = run["layer"]
        if run["simple"]:
            src = f"{run['src_start']}" if run["src_start"] == run["src_end"] else f"{run['src_start']}-{run['src_end']}"
            text = f"{run['source']} {src} (copy)"
        elif len(layer.inputs) > 1:
            text = "blend " + " + ".join(f"{r.weight:g} x {r.source} {r.layer}" for r in layer.inputs)
        else:
            edits = "; ".join(f"{e.op} {','.join(e.modules)}" + (f" x{e.factor:g}" if e.op == "scale" else "") for e in layer.edits)
            text = f"{layer.source} {layer.source_layer} ({edits})"
        yield out, text + (" [new]" if layer.new else "")


@app.command("build")
def build_command(
    source: Optional[str] = typer.Argument(None, help="Model directory, Hub repo id or .gguf file (or `source:` in --config)."),
    output: Optional[Path] = typer.Argument(None, help="Output directory, or a .gguf file for a GGUF source (must not exist unless --force)."),
    overlap: Optional[int] = OVERLAP, layers: Optional[str] = LAYERS, recipe: Optional[str] = RECIPE,
    factor: Optional[int] = FACTOR, group: Optional[int] = GROUP, new_layers: Optional[int] = NEW_LAYERS,
    dtype: Optional[str] = DTYPE, preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG,
    allow_index_dependent: bool = ALLOW_INDEX, stack: Optional[str] = STACK,
    experts: Optional[int] = EXPERTS, top_k: Optional[int] = TOP_K, expert_init: Optional[str] = EXPERT_INIT,
    expert_seed: Optional[int] = EXPERT_SEED, drop_ratio: Optional[float] = DROP_RATIO,
    noise_scale: Optional[float] = NOISE_SCALE, calibration: Optional[str] = CALIBRATION,
    shard_size: Optional[str] = typer.Option(None, "--shard-size", help="Largest shard, e.g. 5GB, 500MB, 2GiB [default: 5GB, or the recipe's shard_size]."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
    verify: bool = typer.Option(False, "--verify", help="Run `dus verify` on the result."),
    file_sha256: bool = typer.Option(False, "--file-sha256", help="Record each shard's SHA-256 (the file hash the Hub shows) in dus_plan.json instead of its BLAKE3; slower on CPUs whose SHA-256 is slower than a page-cache copy."),
):
    """Build an up-scaled model: stream tensors byte-for-byte into safetensors shards.

    transformers checks the plan beside the copy (a few seconds once per plan: the answer
    is kept in ~/.cache/dus/checks, or $DUS_CHECK_CACHE, for `dus plan`, rebuilds and verify).
    """
    import dus.api
    from dus.cli.progress import byte_progress
    from dus.errors import InputError

    if output is None:  # `dus build --config recipe.yaml OUTPUT`: the recipe names the source
        if source is None or config is None:
            raise InputError("usage: dus build SOURCE OUTPUT [options], or dus build --config RECIPE.yaml OUTPUT")
        source, output = None, Path(source)
    resolved_opts = _plan_options(overlap, layers, recipe, factor, group, new_layers, dtype, preset,
                                  str(config) if config else None, allow_index_dependent, stack)
    resolved_opts.update(_expert_options(experts, top_k, expert_init, expert_seed, drop_ratio, noise_scale,
                                         calibration))
    with byte_progress("building") as progress:
        record = dus.api.build(source, output, shard_size=shard_size, force=force, progress=progress,
                               file_sha256=file_sha256, **resolved_opts)
    _warn_index_dependent(record.get("index_dependent", []))
    out = record["output"]
    print(f"wrote {output}: {out['num_layers']} layers, {out['num_parameters']:,} parameters, "
          f"{len(out['shards'])} shard(s), {out['total_size']:,} tensor bytes")
    if verify:
        verify_command(output, None)


@app.command("verify")
def verify_command(
    output: Path = typer.Argument(..., help="A model directory written by dus build, pretrain, sft or dpo, or a .gguf file written by dus build."),
    source: Optional[str] = typer.Option(None, "--source", help="The source model, if it moved since the build."),
):
    """Prove a model is what its dus_plan.json says (shard hashes; for a build also bytes, names,
    shapes, config against the source) and print its lineage back to the original source."""
    import dus.api
    from dus.manifest import format_lineage

    report = dus.api.verify(output, source)  # a mismatch raises VerifyError: exit 1
    print(report.summary())
    if getattr(report, "lineage", None):  # a GGUF carries its plan, not a lineage manifest
        print(format_lineage(report.lineage))
