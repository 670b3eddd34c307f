"""`--freeze original` on a widened model (dus/plan/width.py): train only the added width.

Each widened tensor holds the source tensor's clones; the block at the source's position (the first
size/F rows and columns along each grown dimension) is the original. Its gradient is masked to zero
(so it does not count in the gradient norm either), and after every optimizer step it is put back
as it was (AdamW's decoupled weight decay would otherwise shrink it). Tensors width growth kept as
they are (q/k norms) are frozen whole. One process only: FSDP shards these tensors across ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dus.errors import InputError
from dus.manifest import read_manifest
from dus.plan.model import Plan
from dus.plan.width_tensors import tensor_role
from dus.runtime import decoder_layers


def width_record(model_dir: str) -> dict | None:
    if not (Path(model_dir) / "dus_plan.json").is_file():
        return None
    record = read_manifest(model_dir)
    return Plan.from_json(record.get("plan", record)).recipe.get("width")


def freeze_source_width(model: torch.nn.Module, width: dict, world: int = 1) -> list[tuple]:
    """Mask the original blocks' gradients; return what `keep_fixed` restores after each step."""
    if world > 1:
        raise InputError(
            "--freeze original on a widened model freezes parts of tensors, which needs one process "
            "(FSDP shards them across ranks): run it on one process, or use --freeze none"
        )
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers) + "."
    sandwich = any("pre_feedforward_layernorm" in name for name, _ in model.named_parameters())
    dims = {None: 1, "hidden": width["factor"], "heads": width["factor"], "mlp": width["factor"] * width["mlp_factor"]}
    kept = []
    for name, param in model.named_parameters():
        out_dim, in_dim, *_ = tensor_role(name, prefix, sandwich, model.config.model_type)
        reps = (dims[out_dim], dims[in_dim])[: param.ndim]
        if all(r == 1 for r in reps):
            param.requires_grad_(False)
            continue
        block = tuple(slice(0, size // r) for size, r in zip(param.shape, reps))
        mask = torch.ones_like(param)
        mask[block] = 0
        param.register_hook(lambda grad, mask=mask: grad * mask)
        kept.append((param, block, param.detach()[block].clone()))
    return kept


def keep_fixed(optimizer: torch.optim.Optimizer, kept: list[tuple]) -> None:
    if not kept:
        return

    def restore(*_):
        with torch.no_grad():
            for param, block, saved in kept:
                param[block] = saved

    optimizer.register_step_post_hook(restore)
