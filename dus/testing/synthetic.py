"""Synthetic checkpoints of any config's shape, for benchmarks and memory tests.

Tensor values are zero: copy speed and memory do not depend on them, and
writing them needs no RAM beyond one tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

from dus.plan.layout import TensorSpec
from dus.read.safetensors import DTYPE_CODES
from dus.read.source import meta_tensors
from dus.write.shards import split_shards, write_shards


def write_synthetic(directory: str | Path, config: dict, dtype: str = "bfloat16", shard_bytes: int = 5 * 10**9) -> int:
    """Write config.json and zero-valued safetensors shards; return the tensor bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**config, "dtype": dtype, "torch_dtype": dtype}
    code = DTYPE_CODES[dtype]
    specs = [TensorSpec(name, code, info.shape, ()) for name, info in meta_tensors(config).items()]
    shards = split_shards(specs, shard_bytes)
    names = list(write_shards(str(directory), shards))
    if len(shards) > 1:
        weight_map = {s.name: name for name, part in zip(names, shards) for s in part}
        total = sum(s.nbytes for s in specs)
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return sum(s.nbytes for s in specs)
