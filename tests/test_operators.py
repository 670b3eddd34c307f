"""The computed-tensor extension point: a registered operator's result is what the build writes."""

import pytest
import torch

from dus.plan.layout import Computed, TensorSpec
from dus.read.safetensors import TensorInfo
from dus.write.compute import tensor_bytes
from dus.write.operators import operator, register


@register("test_double")
def _double(inputs, factor=2.0):
    return inputs[0] * factor


def test_a_computed_tensor_is_the_operator_applied_to_its_decoded_inputs(tmp_path):
    data = torch.arange(6, dtype=torch.float32)
    path = tmp_path / "raw"
    path.write_bytes(data.numpy().tobytes())
    info = TensorInfo(str(path), "F32", (2, 3), 0, data.numel() * 4)
    spec = TensorSpec("out", "F32", (2, 3), (), computed=Computed("test_double", (info,), (("factor", 3.0),)))
    assert not spec.is_byte_copy
    got = torch.frombuffer(bytearray(tensor_bytes(spec)), dtype=torch.float32)
    assert torch.equal(got, data * 3.0)


def test_a_wrong_shape_or_an_unknown_operator_is_refused(tmp_path):
    path = tmp_path / "raw"
    path.write_bytes(bytes(24))
    info = TensorInfo(str(path), "F32", (2, 3), 0, 24)
    with pytest.raises(ValueError, match="returned shape"):
        tensor_bytes(TensorSpec("out", "F32", (3, 2), (), computed=Computed("test_double", (info,))))
    with pytest.raises(KeyError, match="no tensor operator"):
        operator("no_such_operator")
