"""`dus plan`, `dus build`, `dus verify`: layer surgery from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich import filesize

from dus.cli import app
from dus.cli.options import options_command
from dus.errors import InputError
from dus.plan.options import PlanOptions, plan_options

RECIPE_HELP = "A YAML recipe file (see docs/recipes.md)."


def _warn_index_dependent(differences: list[str]) -> None:
    for difference in differences:
        print(f"warning: {difference}", file=sys.stderr)


def _plan_loader(config, values: dict, own: dict) -> PlanOptions:
    return plan_options(values, config)


@options_command(app, "plan", PlanOptions, loader=_plan_loader, config_help=RECIPE_HELP)
def plan_command(
    opts: PlanOptions,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the layer map to this PNG file."),
    mergekit_yaml: bool = typer.Option(
        False,
        "--mergekit-yaml",
        help="Print the plan as a mergekit passthrough recipe (YAML) instead, where one exists.",
    ),
):
    """Show what a build would write: the layer map, layer and parameter counts, output bytes.

    Reads only config.json and safetensors headers, never the weights. SOURCE may be a YAML recipe,
    a mergekit passthrough recipe included (`dus plan merge.yml`).
    """
    import dus.api

    resolved = dus.api.plan(options=opts)
    _warn_index_dependent(resolved.index_dependent)
    if mergekit_yaml:
        from dus.plan.mergekit import to_mergekit_yaml

        print(to_mergekit_yaml(resolved.plan, resolved.sources), end="")
        return
    if plot:
        from dus.plan.plot import plot_plan

        plot_plan(resolved.plan, resolved.base.num_layers, plot)
    if as_json:
        print(json.dumps(resolved.to_json(), indent=2))
        return
    print(format_plan(resolved))


def format_plan(resolved) -> str:
    from dus.plan.show import dtype_text, overrides_text, repeating_pattern

    info = resolved.to_json()
    lines = [
        f"source:      {info['source']}  ({info['source_num_layers']} layers, "
        f"{info['source_num_parameters']:,} parameters)",
        "recipe:      " + ", ".join(f"{k}={v}" for k, v in info["recipe"].items()),
        f"output:      {info['num_layers']} layers, {info['num_parameters']:,} parameters, "
        f"{filesize.decimal(info['output_bytes'])} ({info['output_bytes']:,} bytes), dtype {dtype_text(resolved)}",
        *_growth_lines(resolved),
        "layer map (output <- source):",
    ]
    if "moe" in info:  # upcycled: the expert layout before the layer map
        from dus.plan.upcycle import summary_lines

        lines[-1:-1] = summary_lines(info["moe"])
    if overrides := overrides_text(resolved.plan.config_overrides):
        lines.insert(2, f"config sets: {overrides}")
    if pattern := repeating_pattern(resolved.plan.layers):
        return "\n".join([*lines, f"  {pattern}"])
    for out_range, src_text in _runs(resolved.plan.layers):
        lines.append(f"  {out_range:>9}  <-  {src_text}")
    return "\n".join(lines)


def _growth_lines(resolved) -> list[str]:
    """What the layer map does not show: width growth, and layers a computed initialiser makes."""
    lines, recipe = [], resolved.plan.recipe
    if recipe.get("width"):
        src, out = resolved.base.config, resolved.config
        lines.append(
            f"width:       hidden {src['hidden_size']} -> {out['hidden_size']}, heads "
            f"{src['num_attention_heads']} -> {out['num_attention_heads']}, MLP {src['intermediate_size']} -> "
            f"{out['intermediate_size']} (every tensor tiled so the function is kept)"
        )
    if recipe.get("init", {}).get("layers"):
        lines.append(
            f"init:        {recipe['init']['name']} makes output layers "
            f"{', '.join(map(str, recipe['init']['layers']))} from the two source layers they sit between"
        )
    return lines


def _runs(layers):
    """Group consecutive plain copies of consecutive source layers: 0-23 <- base 0-23 (copy)."""
    runs = []
    for i, layer in enumerate(layers):
        simple = len(layer.inputs) == 1 and not layer.edits
        if (
            runs
            and simple
            and runs[-1]["simple"]
            and runs[-1]["source"] == layer.source
            and runs[-1]["src_end"] + 1 == layer.source_layer
            and runs[-1]["end"] + 1 == i
        ):
            runs[-1].update(end=i, src_end=layer.source_layer)
            continue
        runs.append(
            {
                "start": i,
                "end": i,
                "src_start": layer.source_layer,
                "src_end": layer.source_layer,
                "source": layer.source,
                "simple": simple,
                "layer": layer,
            }
        )
    for run in runs:
        out = f"{run['start']}" if run["start"] == run["end"] else f"{run['start']}-{run['end']}"
        layer = run["layer"]
        if run["simple"]:
            src = (
                f"{run['src_start']}" if run["src_start"] == run["src_end"] else f"{run['src_start']}-{run['src_end']}"
            )
            text = f"{run['source']} {src} (copy)"
        elif len(layer.inputs) > 1:
            text = "blend " + " + ".join(f"{r.weight:g} x {r.source} {r.layer}" for r in layer.inputs)
        else:
            edits = "; ".join(
                f"{e.op} {','.join(e.modules)}" + (f" x{e.factor:g}" if e.op == "scale" else "") for e in layer.edits
            )
            text = f"{layer.source} {layer.source_layer} ({edits})"
        yield out, text + (" [new]" if layer.new else "")


def _build_loader(config, values: dict, own: dict) -> PlanOptions:
    if own["output"] is None:  # `dus build --config recipe.yaml OUTPUT`: the recipe names the source
        if values.get("source") is None or config is None:
            raise InputError("usage: dus build SOURCE OUTPUT [options], or dus build --config RECIPE.yaml OUTPUT")
        own["output"], values["source"] = Path(values["source"]), None
    return plan_options(values, config)


@options_command(app, "build", PlanOptions, loader=_build_loader, config_help=RECIPE_HELP)
def build_command(
    opts: PlanOptions,
    output: Path | None = typer.Argument(
        None, help="Output directory, or a .gguf file for a GGUF source (must not exist unless --force)."
    ),
    *,
    shard_size: str | None = typer.Option(
        None, "--shard-size", help="Largest shard, e.g. 5GB, 500MB, 2GiB [default: 5GB, or the recipe's shard_size]."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
    verify: bool = typer.Option(False, "--verify", help="Run `dus verify` on the result."),
    file_sha256: bool = typer.Option(
        False,
        "--file-sha256",
        help="Record each shard's SHA-256 (the file hash the Hub shows) in dus_plan.json instead of its BLAKE3; "
        "slower on CPUs whose SHA-256 is slower than a page-cache copy.",
    ),
):
    """Build an up-scaled model: stream tensors byte-for-byte into safetensors shards.

    transformers checks the plan beside the copy (a few seconds once per plan: the answer
    is kept in ~/.cache/dus/checks, or $DUS_CHECK_CACHE, for `dus plan`, rebuilds and verify).
    """
    import dus.api
    from dus.cli.progress import byte_progress

    with byte_progress("building") as progress:
        record = dus.api.build(
            None, output, options=opts, shard_size=shard_size, force=force, progress=progress, file_sha256=file_sha256
        )
    _warn_index_dependent(record.get("index_dependent", []))
    out = record["output"]
    if str(output).endswith(".gguf") and len(out["shards"]) > 1:  # a split set: OUTPUT itself is not written
        output = ", ".join(str(Path(output).parent / name) for name in out["shards"])
    print(
        f"wrote {output}: {out['num_layers']} layers, {out['num_parameters']:,} parameters, "
        f"{len(out['shards'])} shard(s), {out['total_size']:,} tensor bytes"
    )
    if verify:
        verify_command(output, None)


@app.command("verify")
def verify_command(
    output: Path = typer.Argument(
        ..., help="A model directory written by dus build, pretrain, sft or dpo, or a .gguf file written by dus build."
    ),
    source: str | None = typer.Option(None, "--source", help="The source model, if it moved since the build."),
):
    """Prove a model is what its dus_plan.json says (shard hashes; for a build also bytes, names,
    shapes, config against the source) and print its lineage back to the original source."""
    import dus.api
    from dus.manifest import format_lineage

    report = dus.api.verify(output, source)  # a mismatch raises VerifyError: exit 1
    print(report.summary())
    if getattr(report, "lineage", None):  # a GGUF carries its plan, not a lineage manifest
        print(format_lineage(report.lineage))
