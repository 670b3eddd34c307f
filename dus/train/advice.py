"""One-line warnings for `dus pretrain` runs that would silently do little: a warm-up longer than the run,
a large final checkpoint written for a short run, and an export whose dtype rounds most updates away."""

from __future__ import annotations

from pathlib import Path

import torch
from rich import filesize

SHORT_RUN_STEPS = 100  # a run this short is a test or a smoke run, rarely one to continue
LARGE_CHECKPOINT_BYTES = 10**9


def warmup_warning(steps: int, warmup: int, lr: float, last_lr: float) -> str | None:
    """`last_lr`: the learning rate the run's last step trains at."""
    if not warmup or warmup < steps:
        return None
    return (
        f"warning: --warmup-steps {warmup} >= this run's {steps} steps: the learning rate never reaches --lr "
        f"{lr:g} (the last step trains at {last_lr:.2g}); lower --warmup-steps"
    )


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Weights and AdamW's two moments (the size of a checkpoint, as the trainer holds them)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + moments


def checkpoint_warning(steps: int, size: int, final: bool) -> str | None:
    """`final`: the run ends with a checkpoint although it finishes its schedule (--final-checkpoint)."""
    if not final or steps > SHORT_RUN_STEPS or size < LARGE_CHECKPOINT_BYTES:
        return None
    return (
        f"warning: this {steps}-step run ends with a {filesize.decimal(size)} checkpoint (weights and AdamW "
        f"state, only to continue training later); --no-final-checkpoint leaves only the exported model"
    )


def rounded_away(state: dict[str, torch.Tensor], source, dtype: torch.dtype) -> tuple[int, int, int]:
    """(weights compared, weights the training changed, changed weights equal to the source after the cast to
    `dtype`): the update of the last was below `dtype`'s resolution. Tensors are compared one at a time."""
    total = changed = lost = 0
    for name, trained in state.items():
        before = source.get(name)
        if before is None or before.shape != trained.shape or not trained.is_floating_point():
            continue
        moved = trained.float() != before.float()
        kept = trained.to(dtype) != before.to(dtype)
        total, changed, lost = total + moved.numel(), changed + int(moved.sum()), lost + int((moved & ~kept).sum())
    return total, changed, lost


def export_warning(total: int, changed: int, lost: int, dtype: torch.dtype) -> str | None:
    """Most weights' update rounded away by the export dtype: say the share and how to keep it."""
    if not total or lost * 2 <= total:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"warning: the {name} export rounds away the update of {lost / total:.1%} of the weights (below "
        f"{name}'s resolution; {(changed - lost) / total:.1%} differ from the input model): export in float32 "
        f"with --export-dtype float32, or train longer or at a higher --lr"
    )


class SourceTensors:
    """The input model's tensors by name, each read from its safetensors file when asked for."""

    def __init__(self, model_dir: str | Path):
        from safetensors import safe_open

        self.where = {}
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                self.where.update({key: path for key in f.keys()})

    def get(self, name: str, default=None):
        from safetensors import safe_open

        if name not in self.where:
            return default
        with safe_open(str(self.where[name]), "pt") as f:
            return f.get_tensor(name)
