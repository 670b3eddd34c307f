"""Growth operators beyond copy: expand (identity blocks), blend, scale, multi-source, dtype."""

import json

import pytest
import torch
import transformers
import yaml
from figures import assert_drawn, coloured_share
from models import VOCAB, assert_verified, save_model
from refusal import assert_refused
from safetensors.torch import load_file

import dus.api
from dus.errors import InputError

IDS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi", "gemma2", "mixtral", "olmo2", "cohere2"])
def test_expand_is_identity(arch, tmp_path):
    base = save_model(arch, tmp_path / "src")
    record = dus.api.build(str(tmp_path / "src"), tmp_path / "out", recipe="expand", new_layers=2)
    layers = record["plan"]["layers"]
    assert len(layers) == 6 and [l["new"] for l in layers] == [False, False, True, False, False, True]
    assert all(l["op"] == "zero" for l in layers if l["new"])
    expanded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(expanded), _logits(base), rtol=0, atol=1e-5)
    assert torch.equal(_logits(expanded).argmax(-1), _logits(base).argmax(-1))
    prefix = record["sources"]["base"]["layer_prefix"]
    zeroed = [
        n
        for n in load_file(tmp_path / "out/model.safetensors")
        if any(n.startswith(f"{prefix}{i}.{m}.") for i in (2, 5) for m in record["plan"]["recipe"]["zeroed"])
    ]
    assert_verified(tmp_path / "out", layers=6, computed=len(zeroed))


def test_expand_llama_logits_bitwise(tmp_path):
    """For a pre-norm block with a zeroed output path, h + 0 == h exactly."""
    base = save_model("llama", tmp_path / "src")
    dus.api.build(str(tmp_path / "src"), tmp_path / "out", recipe="expand", new_layers=4)
    expanded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(expanded), _logits(base))


def _recipe(tmp_path, body):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_blend_scale_and_multi_source(tmp_path):
    save_model("llama", tmp_path / "a", seed=0)
    save_model("llama", tmp_path / "b", seed=1)
    recipe = _recipe(
        tmp_path,
        {
            "sources": {"base": str(tmp_path / "a"), "other": str(tmp_path / "b")},
            "layers": [
                {"range": [0, 2]},
                {"blend": [{"layer": 1, "weight": 0.25}, {"layer": 2, "source": "other", "weight": 0.75}]},
                {"layer": 3, "source": "other"},
                {"layer": 3, "scale": {"modules": ["self_attn.o_proj", "mlp.down_proj"], "factor": 0.5}},
            ],
        },
    )
    record = dus.api.build(None, tmp_path / "out", config=recipe)
    ops = [(l["op"], l["source"], l["new"]) for l in record["plan"]["layers"]]
    assert ops == [
        ("copy", "base", False),
        ("copy", "base", False),
        ("blend", "base", True),
        ("copy", "other", False),
        ("scale", "base", True),
    ]
    a, b = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    out = load_file(tmp_path / "out/model.safetensors")
    for suffix in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
        by_hand = 0.25 * a[f"model.layers.1.{suffix}"] + 0.75 * b[f"model.layers.2.{suffix}"]
        assert torch.equal(out[f"model.layers.2.{suffix}"], by_hand)
        assert torch.equal(out[f"model.layers.3.{suffix}"], b[f"model.layers.3.{suffix}"])
    assert torch.equal(out["model.layers.4.self_attn.o_proj.weight"], a["model.layers.3.self_attn.o_proj.weight"] * 0.5)
    assert torch.equal(out["model.layers.4.self_attn.q_proj.weight"], a["model.layers.3.self_attn.q_proj.weight"])
    blended = sum(n.startswith("model.layers.2.") for n in out)
    assert_verified(tmp_path / "out", layers=5, computed=blended + 2)  # the blend's tensors, the 2 scaled projections
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # loads


def test_blend_defaults_to_equal_weights_and_seam_average(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    recipe = _recipe(
        tmp_path, {"source": str(tmp_path / "src"), "layers": [{"range": [0, 2]}, {"blend": [1, 2]}, {"range": [2, 4]}]}
    )
    code, out, err = run_dus("build", "--config", recipe, tmp_path / "out")  # the recipe names the source
    assert code == 0, err
    src, out = load_file(tmp_path / "src/model.safetensors"), load_file(tmp_path / "out/model.safetensors")
    name = "mlp.gate_proj.weight"
    assert torch.equal(
        out[f"model.layers.2.{name}"], 0.5 * src[f"model.layers.1.{name}"] + 0.5 * src[f"model.layers.2.{name}"]
    )


def test_mismatched_sources_refused_before_writing(tmp_path):
    save_model("llama", tmp_path / "a")
    save_model("qwen3", tmp_path / "b")
    recipe = _recipe(
        tmp_path,
        {
            "sources": {"base": str(tmp_path / "a"), "other": str(tmp_path / "b")},
            "layers": [{"range": [0, 4]}, {"layer": 1, "source": "other"}],
        },
    )
    with pytest.raises(InputError, match="different tensors|shape mismatch"):
        dus.api.build(None, tmp_path / "out", config=recipe)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []


def test_dtype_conversion_matches_torch(tmp_path):
    save_model("llama", tmp_path / "src")
    dus.api.build(str(tmp_path / "src"), tmp_path / "out", overlap=1, dtype="bfloat16")
    src, out = load_file(tmp_path / "src/model.safetensors"), load_file(tmp_path / "out/model.safetensors")
    assert out["model.layers.3.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(
        out["model.layers.3.mlp.up_proj.weight"], src["model.layers.1.mlp.up_proj.weight"].to(torch.bfloat16)
    )
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.dtype == torch.bfloat16
    assert_verified(tmp_path / "out", layers=6, computed=len(out))  # every tensor converted, none copied


@pytest.mark.parametrize(
    "recipe, kwargs, layers",
    [
        ("stack", {"factor": 3}, [0, 1, 2, 3] * 3),
        ("interleave", {"factor": 2}, [0, 0, 1, 1, 2, 2, 3, 3]),
        ("idus", {"group": 1}, [0, 1, 1, 2, 2, 3]),
        ("dus", {"overlap": 1}, [0, 1, 2, 1, 2, 3]),
    ],
)
def test_every_recipe_builds_and_verifies(recipe, kwargs, layers, tmp_path):
    save_model("llama", tmp_path / "src")
    record = dus.api.build(str(tmp_path / "src"), tmp_path / "out", recipe=recipe, **kwargs)
    assert [l["source_layer"] for l in record["plan"]["layers"]] == layers
    assert_verified(tmp_path / "out", layers=len(layers))


def test_plot(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    code, _, err = run_dus(
        "plan", tmp_path / "src", "--recipe", "expand", "--new-layers", "2", "--plot", tmp_path / "map.png"
    )
    assert code == 0, err
    assert_drawn(tmp_path / "map.png")


def test_a_blank_figure_is_not_drawn(tmp_path):
    """What the plot tests reject: an empty canvas, and axes with a title and a legend but no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    figure.savefig(tmp_path / "blank.png")
    axes.set_title("expand: 4 -> 6 layers")
    axes.plot([], [], color="tab:blue", label="copy")
    axes.plot([], [], color="tab:red", label="zero")
    axes.legend()
    figure.savefig(tmp_path / "legend.png")
    plt.close(figure)
    for name in ("blank.png", "legend.png"):
        assert coloured_share(tmp_path / name) < 0.003
        with pytest.raises(AssertionError, match="blank figure"):
            assert_drawn(tmp_path / name)


def test_recipe_file_shard_size_and_override(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    recipe = _recipe(tmp_path, {"source": str(tmp_path / "src"), "overlap": 1, "shard_size": "50KB"})
    code, _, err = run_dus("build", "--config", recipe, tmp_path / "a")
    assert code == 0, err
    assert len(list((tmp_path / "a").glob("*.safetensors"))) > 1
    code, _, err = run_dus("build", "--config", recipe, tmp_path / "b", "--shard-size", "1GB", "--overlap", "0")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "b").glob("*.safetensors")] == ["model.safetensors"]
    assert json.loads((tmp_path / "b/config.json").read_text())["num_hidden_layers"] == 8  # the flag's 0, not 1


@pytest.mark.parametrize(
    "entry",
    [
        {"layer": 1, "scale": {"self_attn.o_proj": 0.5}},
        {"layer": 1, "scale": {"modules": "self_attn.o_proj", "factor": 0.5}},
        {"layer": 1, "scale": {"modules": ["self_attn.o_proj"], "factor": "half"}},
        {"range": [0, 2, 3]},
    ],
)
def test_a_malformed_scale_or_range_is_one_line(tmp_path, llama_source, run_dus, entry):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"layers": [{"range": [0, 4]}, entry]}))
    code, _, err = run_dus("build", llama_source, tmp_path / "out", "--config", recipe)
    assert_refused(code, err, "must be", outputs=tmp_path / "out")


@pytest.mark.parametrize(
    "entry",
    [
        {"layer": 1, "scale": {"modules": ["attn.c_proj"], "factor": 0.5}},  # GPT-2's name, not this Llama's
        {"layer": 1, "zero": ["self_attn.o_proj", "mlp.down"]},  # a module name cut short
    ],
)
def test_an_edit_of_a_module_the_layer_lacks_is_refused(tmp_path, llama_source, run_dus, entry):
    """Such an edit would change nothing, and the plan would silently not be the one asked for."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"layers": [{"range": [0, 4]}, entry]}))
    code, _, err = run_dus("build", llama_source, tmp_path / "out", "--config", recipe)
    assert_refused(code, err, "which has no tensor in source layer 1", outputs=tmp_path / "out")
