"""torch and transformers internals are used in one module (dus/private_api.py), behave as dus relies on,
and the dependency bounds in pyproject.toml cover the installed versions; without them, the weight-coverage
check refuses instead of passing unchecked."""

import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

import dus
from dus.errors import BuildError
from dus.private_api import (
    DCP_STORAGE_INFO,
    dcp_flatten,
    dcp_set_element,
    dcp_storage_info,
    decode_special_floats,
    ignored_when_missing,
    unsplit_blocks,
    weight_conversions,
)

ROOT = Path(dus.__file__).parent
PRIVATE = re.compile(
    r"torch\.distributed\.checkpoint\._|_StorageInfo"
    r"|transformers\.(conversion_mapping|core_model_loading)"
    r"|from (torch|transformers)[\w.]* import _|getattr\([^)]*\"_[a-z]|PreTrainedConfig\._"
)


TINY_LLAMA = {  # a one-layer Llama config, built on the meta device
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 64,
}


def test_no_other_module_uses_the_internals():
    users = sorted(
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "private_api.py" and PRIVATE.search(p.read_text())
    )
    assert users == []


def test_the_installed_versions_are_within_the_bounds():
    import transformers

    requirements = {
        (r := Requirement(line)).name: r
        for line in tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for name, version in (("torch", torch.__version__.split("+")[0]), ("transformers", transformers.__version__)):
        assert any(spec.operator == "<" for spec in requirements[name].specifier), name  # an upper bound
        assert requirements[name].specifier.contains(version), (name, version)


def test_dcp_internals_behave_as_dus_relies_on():
    optim = {
        "state": {"layer.weight": {"step": torch.tensor(3.0)}},
        "param_groups": [{"lr": 0.1, "params": ["layer.weight"]}],
    }
    state = {"model": {"layer.weight": torch.ones(2)}, "optim": optim}
    flat = dcp_flatten(state)
    assert "model.layer.weight" in flat and "optim.state.layer.weight.step" in flat
    dcp_set_element(state, ("model", "layer.weight"), torch.zeros(2))
    assert torch.equal(state["model"]["layer.weight"], torch.zeros(2))
    info = dcp_storage_info()
    assert (info.__module__, info.__name__) == DCP_STORAGE_INFO
    assert {"relative_path", "offset", "length"} <= set(info.__dataclass_fields__)


def test_weight_conversions_map_a_checkpoint_name(tmp_path):
    from dus.checks.transformers_check import loaded_names, meta_model

    model = meta_model(TINY_LLAMA)
    assert weight_conversions(model) is not None
    assert loaded_names(model, ["model.layers.0.mlp.up_proj.weight"]) == {"model.layers.0.mlp.up_proj.weight"}


def test_without_the_conversions_the_coverage_check_refuses(monkeypatch):
    """Simulates a transformers without them: the import fails, and the check says it cannot check."""
    from dus.checks.transformers_check import check_covers, meta_model

    model = meta_model(TINY_LLAMA)
    monkeypatch.setitem(sys.modules, "transformers.conversion_mapping", None)  # import raises ImportError
    assert weight_conversions(model) is None
    with pytest.raises(BuildError, match="cannot check that the checkpoint holds every weight"):
        check_covers(model, [n for n, _ in model.named_parameters()], "model.safetensors")


def test_transformers_model_internals_behave_as_dus_relies_on():
    from dus.checks.transformers_check import meta_model

    assert decode_special_floats({"a": {"__float__": "Infinity"}, "b": 1})["a"] == float("inf")
    model = meta_model(TINY_LLAMA)
    assert unsplit_blocks(model) == {"LlamaDecoderLayer"}
    assert isinstance(ignored_when_missing(model), tuple)
