"""Training a mixture of experts (an upcycled model, docs/upcycle.md): the router's load-balancing loss,
tokens per expert, and freezing the router or the experts.

The auxiliary loss is the family's own, where it defines one (transformers adds router_aux_loss_coef x
its load-balancing loss to the causal-LM loss when output_router_logits is on; HunYuan-MoE has none);
it is on while training and off for eval, so eval loss and perplexity stay the language-model loss. Tokens per
expert are counted by a forward hook on every router (its top-k indices), all layers together, between two log records.
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from dus.errors import InputError

ROUTER = re.compile(r"\.(mlp|block_sparse_moe)\.gate(\.wg)?\.weight$")  # the routers, not a shared expert's gate
EXPERTS = re.compile(r"\.(experts|shared_expert|shared_expert_gate|shared_mlp)\.")
PARTS = {"router": ROUTER, "experts": EXPERTS}


def is_moe(config) -> bool:
    text = config.get_text_config()
    return any(
        isinstance(getattr(text, key, None), int) and getattr(text, key) > 1
        for key in ("num_local_experts", "num_experts")
    )


def freeze_parts(model: nn.Module, part: str) -> None:
    """Train only the routers (`router`) or only the experts (`experts`): everything else frozen."""
    pattern = PARTS[part]
    chosen = [p for name, p in model.named_parameters() if pattern.search(f".{name}")]
    if not chosen:
        raise InputError(f"--freeze {part}: this model has no {part} parameters (is it a mixture of experts?)")
    model.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)


class MoeTraining:
    """Aux loss on or off, and the tokens each expert received since the last record."""

    def __init__(self, model: nn.Module, coef: float | None):
        self.model, self.counts, self.hooks = model, None, []
        config = model.config.get_text_config()
        has_loss = hasattr(config, "router_aux_loss_coef")
        if coef is not None:
            if coef < 0:
                raise InputError(f"--router-aux-loss-coef must not be negative, got {coef}")
            if not has_loss:
                raise InputError(f"--router-aux-loss-coef: {config.model_type} defines no router load-balancing loss")
            config.router_aux_loss_coef = coef
            for module in model.modules():  # the causal LM read it from its config when it was built
                if hasattr(module, "router_aux_loss_coef"):
                    module.router_aux_loss_coef = coef
        self.coef = config.router_aux_loss_coef if has_loss else 0.0
        self.config = config
        config.output_router_logits = self.coef > 0
        self.experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
        for module in model.modules():
            if type(module).__name__.endswith(("Router", "MoEV1Gate")):  # MixtralTopKRouter, HunYuanMoEV1Gate, ...
                self.hooks.append(module.register_forward_hook(self._count))

    def _count(self, module, inputs, output) -> None:
        if not module.training or not isinstance(output, tuple) or len(output) < 3:
            return
        indices = output[2].detach().flatten()
        counts = torch.bincount(indices, minlength=self.experts)[: self.experts].to(torch.float64)
        self.counts = counts if self.counts is None else self.counts + counts.to(self.counts.device)

    @contextlib.contextmanager
    def language_model_loss(self):
        """Eval: the causal-LM loss alone."""
        self.config.output_router_logits = False
        try:
            yield
        finally:
            self.config.output_router_logits = self.coef > 0

    def record(self, all_reduce) -> dict:
        """tokens_per_expert (all layers, since the last record) and the largest expert's share of them
        (1/E is perfectly balanced); empty before any routing."""
        if self.counts is None:
            return {}
        counts = all_reduce(self.counts.clone())
        self.counts = None
        total = counts.sum().item()
        return {
            "router_aux_loss_coef": self.coef,
            "tokens_per_expert": [int(c) for c in counts.tolist()],
            "max_expert_share": (counts.max().item() / total) if total else None,
        }
