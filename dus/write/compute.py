"""The only place tensor values are decoded: blends, scales and dtype changes.

One output tensor at a time, so memory is bounded by the largest tensor, not
the model. torch is imported here and only here on the build path.
"""

from __future__ import annotations

from dus.plan.layout import Computed, TensorSpec
from dus.read.safetensors import TORCH_NAMES, TensorInfo


def torch_dtype(code: str):
    import torch

    return getattr(torch, TORCH_NAMES[code])


def read_tensor(info: TensorInfo):
    """Decode one tensor from its byte range (little-endian, as safetensors stores it)."""
    import torch

    buffer = bytearray(info.nbytes)
    with open(info.path, "rb") as f:
        f.seek(info.start)
        if f.readinto(buffer) != info.nbytes:
            raise OSError(f"{info.path}: file ended inside a tensor")
    if not buffer:
        return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    return torch.frombuffer(buffer, dtype=torch_dtype(info.dtype)).reshape(info.shape)


def tensor_bytes(spec: TensorSpec) -> bytes:
    """The output bytes of a tensor that is not a plain byte copy."""
    if spec.computed is not None:
        from dus.write.operators import bytes_operator

        write = bytes_operator(spec.computed.op)
        if write is not None:  # computed without torch
            return write(spec)
    elif not spec.parts:  # zeroed: all-zero bytes are 0 in every dtype
        return bytes(spec.nbytes)
    import torch

    if spec.computed is not None:
        result = compute_tensor(spec.computed, spec.shape).to(torch_dtype(spec.dtype))
        return result.contiguous().view(torch.uint8).numpy().tobytes()
    out_dtype = torch_dtype(spec.dtype)
    if spec.blocks is not None:  # a tensor packed by layer, rearranged, then converted to --dtype
        from dus.write.gather import block_chunks

        raw = bytearray(b"".join(block_chunks(spec)))
        result = torch.frombuffer(raw, dtype=torch_dtype(spec.parts[0][0].dtype)).reshape(spec.shape).to(out_dtype)
        return result.contiguous().view(torch.uint8).numpy().tobytes()
    if len(spec.parts) == 1 and spec.parts[0][1] == 1.0 and spec.factor == 1.0:
        result = read_tensor(spec.parts[0][0]).to(out_dtype)  # a pure dtype change
    else:
        wide = torch.float64 if any(info.dtype == "F64" for info, _ in spec.parts) else torch.float32
        result = None
        for info, weight in spec.parts:
            term = read_tensor(info).to(wide) * weight
            result = term if result is None else result + term
        result = (result * spec.factor).to(out_dtype)
    return result.contiguous().view(torch.uint8).numpy().tobytes()


def compute_tensor(computed: Computed, shape: tuple[int, ...]):
    """Run a computed tensor's operator on its decoded inputs; the result must have `shape`."""
    from dus.write.operators import operator

    result = operator(computed.op)([read_tensor(info) for info in computed.inputs], **dict(computed.params))
    if tuple(result.shape) != tuple(shape):
        raise ValueError(f"operator {computed.op!r} returned shape {list(result.shape)}, planned {list(shape)}")
    return result
