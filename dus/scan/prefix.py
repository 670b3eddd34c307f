"""Run many grown models from one base pass: the prefix cache.

A copy plan whose first j output layers are the source's layers 0..j-1 computes,
up to its layer j-1, exactly what the base model computes: the residual stream
entering layer j (hidden[j]). One base forward per sequence stores hidden[k] at
every layer boundary k = 0..n, and the arguments transformers passed each layer
(attention mask for its layer type, rotary cos/sin, positions). A plan is then
its suffix: source layers called in plan order on hidden[j], each with the
arguments the base gave that source layer, then the model's own final norm, LM
head (and soft-capping) on the result.

Why this is the built model's computation: `dus scan` first has transformers
check (dus.plan) that every layer of the source builds identically at any
position (the check `dus build` runs), and the planned config gives each
position its source layer's type, so a layer receives the same mask and
position embeddings in the grown model as in the base. Without a KV cache the
layer index selects nothing else. Plans that share a suffix run together, their
hidden states stacked along the batch (the per-layer arguments broadcast), and
so do sequences of one length whose layers received identical arguments (the
text's windows, probe sequences): one layer call then serves many plans and
sequences, which is what makes small probes cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dus.runtime import decoder_layers


@dataclass
class Prefix:
    """One sequence's base pass: hidden[k] entering layer k (hidden[n]: leaving the last), and each layer's call."""

    input_ids: torch.Tensor  # [1, T]
    hidden: list[torch.Tensor]  # n + 1 tensors [1, T, H] (or views of a file-backed store)
    calls: list[tuple[tuple, dict]]  # per layer: positional arguments after the hidden state, keyword arguments
    returns_tuple: bool  # the layers return (hidden, ...) rather than a tensor


class Runner:
    """The base model and its decoder stack, run as prefix + suffix."""

    def __init__(self, model):
        self.model = model
        self.layers = decoder_layers(model)
        self.parent, self.attr = _owner(model, self.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> Prefix:
        n = self.num_layers
        hidden: list = [None] * (n + 1)
        calls: list = [None] * n
        returned = {}

        def before(index):
            def hook(_module, args, kwargs):
                if args:
                    hidden[index], calls[index] = args[0], (args[1:], dict(kwargs))
                else:
                    rest = dict(kwargs)
                    hidden[index], calls[index] = rest.pop("hidden_states"), ((), rest)

            return hook

        def after(_module, _args, output):
            returned["tuple"] = isinstance(output, tuple)
            hidden[n] = output[0] if isinstance(output, tuple) else output

        handles = [layer.register_forward_pre_hook(before(k), with_kwargs=True) for k, layer in enumerate(self.layers)]
        handles.append(self.layers[-1].register_forward_hook(after))
        try:
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        return Prefix(input_ids, hidden, calls, returned["tuple"])

    @torch.no_grad()
    def hidden(
        self, prefixes: list[Prefix], starts: list[int], suffix: tuple[int, ...], weights: dict | None = None
    ) -> torch.Tensor:
        """[len(starts) * len(prefixes), T, H], start-major: every sequence's hidden[j], for each j in `starts`,
        through source layers `suffix`, as one batch. The sequences' layers must have received the same arguments
        in the base pass (same_calls; one sequence always has): the first sequence's serve them all. `weights`
        {suffix position: {parameter name: tensor}} replaces those parameters while that position runs."""
        device = prefixes[0].hidden[starts[0]].device  # under a device map, hidden[j] is where layer j ran
        h = torch.cat([p.hidden[j].to(device) for j in starts for p in prefixes])
        for position, k in enumerate(suffix):
            args, kwargs = prefixes[0].calls[k]
            with _swapped(self.layers[k], (weights or {}).get(position, {})):
                out = self.layers[k](h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return h

    @torch.no_grad()
    def head(self, h: torch.Tensor, prefixes: list[Prefix], keep: int = 0) -> torch.Tensor:
        """The logits of `h` (a multiple of len(prefixes) rows, start-major as `hidden` returns them): the model's
        forward with its stack replaced by one module that returns `h`, so the final norm, LM head and whatever
        else the architecture applies after its layers are applied exactly as it applies them. `keep` > 0: the
        last `keep` positions only."""
        ids = torch.cat([p.input_ids for p in prefixes]).repeat(h.shape[0] // len(prefixes), 1)
        setattr(self.parent, self.attr, torch.nn.ModuleList([_Inject(h, prefixes[0].returns_tuple)]))
        try:
            return self.model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        finally:
            setattr(self.parent, self.attr, self.layers)


def batches(prefixes: list[Prefix]) -> list[list[int]]:
    """The sequences grouped into batches that `Runner.hidden` can run together: equal lengths whose layers
    received the same arguments (same_calls); any other sequence runs alone."""
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_length.setdefault(p.input_ids.shape[1], []).append(i)
    out = []
    for group in by_length.values():
        if same_calls([prefixes[i] for i in group]):
            out.append(group)
        else:
            out.extend([i] for i in group)
    return out


def same_calls(prefixes: list[Prefix]) -> bool:
    """Whether every layer received the same arguments (masks, positions) in each sequence's base pass: then the
    sequences can run as one batch (equal-length windows of a causal LM, as dus eval batches them)."""
    first = prefixes[0]
    return all(len(p.input_ids[0]) == len(first.input_ids[0]) and _equal(p.calls, first.calls) for p in prefixes)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # an object without a plain equality: do not batch
        return False


@contextmanager
def _swapped(layer: torch.nn.Module, tensors: dict):
    """The layer with these parameters replaced, the originals put back after."""
    saved = []
    try:
        for name, tensor in tensors.items():
            module_name, _, attr = name.rpartition(".")
            module = layer.get_submodule(module_name)
            original = module._parameters[attr]
            saved.append((module, attr, original))
            module._parameters[attr] = torch.nn.Parameter(tensor.to(original.device), requires_grad=False)
        yield layer
    finally:
        for module, attr, original in reversed(saved):
            module._parameters[attr] = original


class _Inject(torch.nn.Module):
    def __init__(self, hidden: torch.Tensor, as_tuple: bool):
        super().__init__()
        self.hidden, self.as_tuple = hidden, as_tuple

    def forward(self, *args, **kwargs):
        return (self.hidden,) if self.as_tuple else self.hidden


def _owner(model, layers) -> tuple[torch.nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is layers:
                return module, name
    raise ValueError("the decoder stack has no parent module")
