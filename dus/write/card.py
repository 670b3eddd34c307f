"""The model card (README.md) of a built model: Hub front matter and the layer map."""

from __future__ import annotations

from dus.plan.model import Plan
from dus.read.source import is_repo_id


def model_card(plan: Plan, source_layers: int, num_parameters: int, index_dependent: list[str] = ()) -> str:
    from huggingface_hub import ModelCard, ModelCardData  # escapes the YAML front matter

    bases = [ref for ref in plan.sources.values() if is_repo_id(ref)]
    data = ModelCardData(library_name="transformers",
                         tags=list(dict.fromkeys(["dus", "depth-up-scaling", plan.recipe.get("name", "custom")])),
                         base_model=bases or None, base_model_relation="merge" if len(bases) > 1 else None)
    front = ["---", data.to_yaml(), "---"]
    recipe = ", ".join(f"{k}={v}" for k, v in plan.recipe.items() if k != "name")
    lines = [
        *front, "",
        f"# Depth up-scaled from {plan.sources[plan.base]}", "",
        f"Built with [dus](https://pypi.org/project/dus/) recipe `{plan.recipe.get('name')}`"
        + (f" ({recipe})" if recipe else "") + f": {source_layers} → {len(plan.layers)} decoder layers, "
        f"{num_parameters:,} parameters. `dus_plan.json` records the exact plan and a digest of every shard; "
        "`dus verify` checks them.", "",
        "Like SOLAR-10.7B right after depth up-scaling, this model is expected to need continued pretraining.", "",
        "| output layer | source | source layer | op |", "|---:|---|---:|---|",
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
        lines += ["", "## Layers that differ from their source", "",
                  "Built with `--allow-index-dependent`: this architecture computes part of a layer from its "
                  "index, so these copies do not compute what their source layers computed:", "",
                  *[f"- {d}" for d in index_dependent]]
    return str(ModelCard("\n".join(lines) + "\n"))


def pattern_paragraph(note: str | None) -> str:
    """A card paragraph for a build that leaves its architecture's periodic attention pattern."""
    return f"\n**Attention pattern:** {note}.\n" if note else ""


def moe_paragraph(moe: dict, output: dict) -> str:
    """A card section for an upcycled model: experts, initialisation, active and total parameters."""
    preserved = {"yes": "it computes exactly what the dense model computed (up to float rounding)",
                 "no": "it no longer computes what the dense model computed: it needs continued pretraining"}
    kept = preserved.get(moe["function_preserved"], f"it computes the dense model {moe['function_preserved']}")
    return (f"\n## Mixture of experts\n\nUpcycled into {moe['architecture']}: every decoder layer's MLP became "
            f"{moe['experts']} experts with top-{moe['top_k']} routing, initialised by `{moe['init']}` "
            f"(seed {moe['seed']}); {kept}. **{output['active_parameters']:,} active parameters** per token of "
            f"**{output['total_parameters']:,} total**. `dus_plan.json` records where every tensor comes from "
            "(`provenance`).\n")
