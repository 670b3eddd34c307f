"""Process groups and FSDP2: one process runs plain PyTorch, torchrun runs sharded.

Under torchrun every rank holds 1/world of each parameter, gradient and
optimizer state (`fully_shard` per decoder layer, then the root for embeddings,
final norm and LM head). nccl on GPU, gloo on CPU, where FSDP2 shards too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dus.errors import BuildError, InputError
from dus.runtime import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """`device`: a --device value (dus.runtime); under torchrun each rank takes GPU LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = resolve_device(device)
    cuda = name.startswith("cuda")
    if world > 1 and not cuda and name != "cpu":
        raise InputError(f"--device {name}: torchrun runs on CUDA or CPU processes")
    if cuda and (world > 1 or name == "cuda"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():  # torchrun --nproc-per-node above the GPU count
            raise InputError(
                f"this rank is local rank {device.index}, but this node has "
                f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes "
                "per node, or pass --device cpu"
            )
    else:
        device = torch.device(name)
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(dist.get_rank() if world > 1 else 0, world, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def main_first(d: Dist, fn):
    """fn() on rank 0 first (it fills a shared cache, e.g. the tokenized corpus), then on the others.
    If it fails on rank 0, every rank fails with rank 0's message instead of waiting forever."""
    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:
            error = e
    failed = broadcast_object(None if error is None else (isinstance(error, InputError), str(error)), d)
    if error is not None:
        raise error
    if failed:
        raise (InputError if failed[0] else BuildError)(failed[1])
    return result if d.is_main else fn()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj, d: Dist):
    """Rank 0's value on every rank (e.g. a decision only rank 0 can make)."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_model(model: nn.Module, layers: nn.ModuleList, d: Dist, compute_dtype: torch.dtype) -> None:
    mesh = init_device_mesh(d.device.type, (d.world,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for i, layer in enumerate(layers):
        # The last layer's backward starts right after its forward: keep it gathered.
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def load_full_state(model: nn.Module, source: nn.Module | None, d: Dist) -> None:
    """Scatter rank 0's full weights into the (empty) shards; buffers such as rotary
    frequencies are not in the state dict, so broadcast them too."""
    full = source.state_dict() if d.is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    source_buffers = dict(source.named_buffers()) if d.is_main else {}
    for name, buffer in model.named_buffers():
        if d.is_main:
            buffer.copy_(source_buffers[name])
        dist.broadcast(buffer, src=0)


def sharding_summary(model: nn.Module) -> dict:
    """What the run really did, for run.json: how many parameters are DTensors, on which mesh."""
    params = list(model.parameters())
    sharded = [p for p in params if isinstance(p, DTensor)]
    return {
        "params": len(params),
        "dtensor_params": len(sharded),
        "mesh_shape": list(sharded[0].device_mesh.shape) if sharded else [],
        "placements": sorted({str(pl) for p in sharded for pl in p.placements}),
        "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
        "global_numel": sum(p.numel() for p in params),
    }
