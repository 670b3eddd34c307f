"""What transformers builds from an upcycled config, compared with the dense model outside the MLPs.

The family table (dus/plan/moe_family.py) says which MoE architecture computes a dense family's
layers; this check asks transformers, on the meta device, for both models and requires every
module outside the MLP/MoE block (attention, norms, rotary embedding, embeddings, head) to hold
the same parameters and buffers, of the same shapes, and the same values of the plain settings
both have (scaling, head
dim, sliding window, norm epsilon, rope type, ...), module for module in order (the model holding
the stack: its parameters only). Class names may
differ (LlamaAttention, MixtralAttention); a setting a family reads differently may not: such a
plan is refused rather than written as a model that silently differs from the dense one.
"""

from __future__ import annotations

from dus.errors import InputError


def check_moe(dense_config: dict, moe_config: dict, block: str, layer_prefix: str) -> None:
    from dus.checks.equivalence import module_view
    from dus.checks.transformers_check import meta_model

    dense, moe = meta_model(dense_config), meta_model(moe_config)
    want, got = _outside_mlp(module_view(dense), block), _outside_mlp(module_view(moe), block)
    if len(want) != len(got):
        raise InputError(
            f"{moe_config['model_type']} builds {len(got)} modules outside the MLPs where "
            f"{dense_config['model_type']} builds {len(want)}: refusing to upcycle into a different model"
        )
    for (path, (_, tensors, settings)), (moe_path, (_, moe_tensors, moe_settings)) in zip(want, got):
        if tensors != moe_tensors:
            raise InputError(
                f"{moe_config['model_type']}'s {moe_path} holds {moe_tensors}, the dense {path} "
                f"{tensors}: refusing to upcycle into a different model"
            )
        if layer_prefix.startswith(f"{path}."):  # the model holding the stack: its own flags name its
            continue  # family's mask logic (has_sliding_layers), checked per layer
        for key in sorted(set(settings) & set(moe_settings)):  # a name only one family has is a
            a, b = settings[key], moe_settings[key]  # means (layer_type), not what it computes
            if a != b:
                raise InputError(
                    f"{moe_config['model_type']} would compute {moe_path} differently from the dense "
                    f"{dense_config['model_type']}: {key} is {b!r}, not {a!r}; refusing to upcycle"
                )


def _outside_mlp(view: dict, block: str) -> list[tuple[str, tuple]]:
    """(path, view entry) of every module but the causal LM itself and the MLP/MoE blocks, in order."""
    inside = (".mlp", f".{block}")
    return [
        (path, entry) for path, entry in view.items() if path and not any(f"{part}." in f"{path}." for part in inside)
    ]
