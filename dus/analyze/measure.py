"""Per-layer influence and layer-to-layer distances from the hidden states.

HF indexing, used everywhere in `dus analyze`: with `output_hidden_states=True`
a model with n layers returns n+1 states, hidden_states[0] = the embeddings =
the input of layer 0, and hidden_states[i+1] = the output of layer i = the input
of layer i+1. HF replaces hidden_states[n] with the *final-normed* output; we put
back the raw output of layer n-1 (captured by a forward hook), so every entry is
a point on the residual stream and layer n-1 is measured like the others.

  influence[l]     = mean over all tokens of 1 - cos(h[l], h[l+1])   (ShortGPT Block Influence)
  distance[i][j]   = mean over sequences of arccos(cos(h[i], h[j])) / pi at the last token
                     (Gromov et al. 2024); symmetric, zero diagonal, values in [0, 1]
  distance_all_tokens: the same angular distance averaged over every token
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dus.analyze.data import batches
from dus.errors import InputError
from dus.runtime import decoder_layers


@torch.no_grad()
def hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq, n+1, hidden] float32: the residual stream entering each layer, then leaving the last."""
    captured = {}

    def keep(_module, _inputs, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[-1].register_forward_hook(keep)
    body = model.base_model  # the decoder without its LM head: the logits are not needed
    try:
        out = body(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    states = list(out.hidden_states)
    if len(states) != model.config.num_hidden_layers + 1:
        raise InputError(
            f"expected {model.config.num_hidden_layers + 1} hidden states, the model returned {len(states)}"
        )
    states[-1] = captured["last"]
    return torch.stack([s.float() for s in states], dim=2)


def measure(model, windows: torch.Tensor, batch_size: int, device: str | torch.device = "cpu") -> dict:
    """Stream `windows` through the model and average the three metrics."""
    n = model.config.num_hidden_layers
    influence = torch.zeros(n, dtype=torch.float64)
    last = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    every = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for ids in batches(windows, batch_size):
        unit = F.normalize(hidden_states(model, ids.to(device)), dim=-1)  # [b, t, n+1, d]
        influence += (1 - (unit[:, :, :-1] * unit[:, :, 1:]).sum(-1)).sum((0, 1)).double().cpu()
        last += angular(unit[:, -1].double()).sum(0).cpu()
        every += angular(unit.flatten(0, 1)).sum(0).double().cpu()
    sequences, length = windows.shape
    return {
        "influence": (influence / (sequences * length)).tolist(),
        "distance": _clean(last / sequences).tolist(),
        "distance_all_tokens": _clean(every / (sequences * length)).tolist(),
        "sequences": sequences,
        "seq_len": length,
        "tokens": sequences * length,
    }


def angular(unit: torch.Tensor) -> torch.Tensor:
    """[..., k, d] unit vectors -> [..., k, k] angular distances arccos(cos)/pi in [0, 1]."""
    cos = unit @ unit.transpose(-1, -2)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def _clean(d: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric with a zero diagonal (rounding makes cos(h, h) a hair under 1)."""
    d = (d + d.T) / 2
    return d.fill_diagonal_(0.0)
