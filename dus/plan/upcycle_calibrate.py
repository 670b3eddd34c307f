"""`--calibration TEXT` for `--expert-init split`: experts made of neurons that fire together.

MoEfication (Zhang et al., 2022) and LLaMA-MoE (Zhu et al., 2024) group a dense MLP's intermediate
neurons by co-activation rather than by position. Here the dense model reads the calibration text
once; each source layer's neurons are described by their |activation| over its tokens (the input of
down_proj, act(gate) * up), normalised, and grouped by balanced spherical k-means into E clusters of
exactly I/E neurons each (seeded; a neuron goes to its best cluster that still has room, the most
decided neurons first). The clusters are recorded in the plan (`moe.clusters`), so the build and
`dus verify` slice by them without reading the text again.
"""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError

MAX_TOKENS = 2048
ITERATIONS = 20


def neuron_clusters(model_dir: str, text_path: str, experts: int, layers: list[int], seed: int) -> dict[str, list[int]]:
    """{source layer: the expert of each intermediate neuron} for the layers a plan uses."""
    import torch

    from dus.runtime import decoder_layers, load_model, load_tokenizer

    path = Path(text_path)
    if not path.is_file():
        raise InputError(f"--calibration {text_path}: no such file")
    model, _ = load_model(model_dir, "cpu", "float32")
    ids = load_tokenizer(model_dir)(path.read_text(encoding="utf-8"), return_tensors="pt").input_ids[:, :MAX_TOKENS]
    if ids.shape[1] < experts:
        raise InputError(
            f"--calibration {text_path}: {ids.shape[1]} tokens are too few to tell {experts} experts apart"
        )
    seen: dict[int, torch.Tensor] = {}
    stack = decoder_layers(model)
    hooks = [
        stack[i].mlp.down_proj.register_forward_pre_hook(
            lambda module, args, i=i: seen.__setitem__(i, args[0][0].abs().T.contiguous())
        )
        for i in sorted(set(layers))
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return {str(i): balanced_kmeans(features, experts, seed + i) for i, features in seen.items()}


def balanced_kmeans(features, experts: int, seed: int) -> list[int]:
    """Cluster rows of `features` (neurons x tokens) into `experts` groups of equal size."""
    import torch

    x = torch.nn.functional.normalize(features.double(), dim=1)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=generator)[:experts]]
    assign = None
    for _ in range(ITERATIONS):
        new = _balanced_assign(x @ centroids.T, n // experts)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        centroids = torch.stack([x[assign == e].mean(0) for e in range(experts)])
        centroids = torch.nn.functional.normalize(centroids, dim=1)
    return [int(e) for e in assign]


def _balanced_assign(scores, capacity: int):
    """Each neuron to its best cluster with room, the neurons with the clearest preference first."""
    import torch

    top = scores.topk(2, dim=1).values
    order = torch.argsort(top[:, 0] - top[:, 1], descending=True, stable=True)
    room = [capacity] * scores.shape[1]
    assign = torch.empty(scores.shape[0], dtype=torch.long)
    for neuron in order.tolist():
        for cluster in torch.argsort(scores[neuron], descending=True, stable=True).tolist():
            if room[cluster]:
                room[cluster] -= 1
                assign[neuron] = cluster
                break
    return assign
