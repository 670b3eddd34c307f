"""The model card (README.md) of a model dus wrote: Hub front matter and, for a build, the layer map.

The Hub builds its model tree from `base_model` and `base_model_relation`, whose values it defines as
adapter | merge | quantized | finetune. A build copies, blends and zeroes layers of existing weights
without training them: a merge, as the Hub files mergekit's passthrough (layer-stacking) merges, whether
of one model or several (a multi-source recipe). pretrain, sft and dpo train every weight they keep: a
finetune of their parent. The source is named by its Hub id when it is one (or a Hugging Face cache
snapshot of one), else by its directory name: never by a local absolute path.
"""

from __future__ import annotations

from pathlib import Path

from dus.plan.model import Plan
from dus.read.source import is_repo_id

BUILD_RELATION = "merge"  # layers of existing weights, rearranged, not trained
STAGE_RELATION = "finetune"  # pretrain, sft, dpo: trained from their parent


def source_name(ref: str) -> str:
    """The Hub id of a source (`org/name`, or the repo of a cache snapshot .../models--org--name/snapshots/REV),
    else the name of its directory (or file)."""
    if is_repo_id(ref):
        return ref
    path = Path(ref).expanduser().resolve()
    for folder in (path, *path.parents):
        if folder.name.startswith("models--") and folder.name.count("--") >= 2:
            return folder.name.removeprefix("models--").replace("--", "/", 1)
    return path.name


def _front(tags: list[str], bases: list[str], relation: str) -> list[str]:
    from huggingface_hub import ModelCardData  # escapes the YAML front matter

    data = ModelCardData(
        library_name="transformers",
        tags=list(dict.fromkeys(tags)),
        base_model=list(dict.fromkeys(bases)),
        base_model_relation=relation,
    )
    return ["---", data.to_yaml(), "---"]


def stage_card(stage: str, parent: str, summary: str) -> str:
    """README.md of a pretrain, sft or dpo output: a finetune of its parent."""
    from huggingface_hub import ModelCard

    lines = [
        *_front(["dus", stage], [source_name(parent)], STAGE_RELATION),
        "",
        f"# {source_name(parent)}, after dus {stage}",
        "",
        summary,
        "",
        "`dus_plan.json` records the command, the parent and the data; `dus verify` checks the weights and "
        "prints the lineage.",
    ]
    return str(ModelCard("\n".join(lines) + "\n"))


def model_card(plan: Plan, source_layers: int, num_parameters: int, index_dependent: list[str] = ()) -> str:
    from huggingface_hub import ModelCard

    names = [source_name(ref) for ref in plan.sources.values()]
    front = _front(["dus", "depth-up-scaling", plan.recipe.get("name", "custom")], names, BUILD_RELATION)
    recipe = ", ".join(f"{k}={v}" for k, v in plan.recipe.items() if k != "name")
    lines = [
        *front,
        "",
        f"# {'Grown (width and depth)' if plan.recipe.get('width') else 'Depth up-scaled'} from "
        f"{source_name(plan.sources[plan.base])}",
        "",
        f"Built with [dus](https://pypi.org/project/dus/) recipe `{plan.recipe.get('name')}`"
        + (f" ({recipe})" if recipe else "")
        + f": {source_layers} → {len(plan.layers)} decoder layers, "
        f"{num_parameters:,} parameters. `dus_plan.json` records the exact plan and a digest of every shard; "
        "`dus verify` checks them.",
        "",
        "Like SOLAR-10.7B right after depth up-scaling, this model is expected to need continued pretraining.",
        "",
        "| output layer | source | source layer | op |",
        "|---:|---|---:|---|",
    ]
    for i, layer in enumerate(plan.layers):
        src = (
            " + ".join(f"{r.weight:g}×{r.layer}" for r in layer.inputs)
            if len(layer.inputs) > 1
            else str(layer.source_layer)
        )
        op = layer.op + (" (new)" if layer.new else "")
        lines.append(f"| {i} | {layer.source} | {src} | {op} |")
    if index_dependent:
        lines += [
            "",
            "## Layers that differ from their source",
            "",
            "Built with `--allow-index-dependent`: this architecture computes part of a layer from its "
            "index, so these copies do not compute what their source layers computed:",
            "",
            *[f"- {d}" for d in index_dependent],
        ]
    return str(ModelCard("\n".join(lines) + "\n"))


def pattern_paragraph(note: str | None) -> str:
    """A card paragraph for a build that leaves its architecture's periodic attention pattern."""
    return f"\n**Attention pattern:** {note}.\n" if note else ""


def moe_paragraph(moe: dict, output: dict) -> str:
    """A card section for an upcycled model: experts, initialisation, active and total parameters."""
    preserved = {
        "yes": "it computes exactly what the dense model computed (up to float rounding)",
        "no": "it no longer computes what the dense model computed: it needs continued pretraining",
    }
    kept = preserved.get(moe["function_preserved"], f"it computes the dense model {moe['function_preserved']}")
    return (
        f"\n## Mixture of experts\n\nUpcycled into {moe['architecture']}: every decoder layer's MLP became "
        f"{moe['experts']} experts with top-{moe['top_k']} routing, initialised by `{moe['init']}` "
        f"(seed {moe['seed']}); {kept}. **{output['active_parameters']:,} active parameters** per token of "
        f"**{output['total_parameters']:,} total**. `dus_plan.json` records where every tensor comes from "
        "(`provenance`).\n"
    )
