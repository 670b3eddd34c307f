"""Plans from options, presets and recipe files; config remapping; headers only."""

import json
from pathlib import Path

import pytest
import yaml
from models import save_model

import dus.api
from dus.errors import InputError
from dus.plan import recipes
from dus.plan.config import output_config
from dus.plan.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SOLAR_PUBLISHED = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def test_solar_preset_reproduces_published_config(run_dus):
    code, out, err = run_dus("plan", ROOT / "configs/mistral-7b-v0.1.json", "--preset", "solar", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["num_layers"] == 48
    assert info["num_parameters"] == 10_731_524_096
    assert info["source_num_parameters"] == 7_241_732_096
    assert [l["source_layer"] for l in info["layers"]] == list(range(24)) + list(range(8, 32))
    assert {l["op"] for l in info["layers"]} == {"copy"}
    for key, value in SOLAR_PUBLISHED.items():
        assert info["config"][key] == value, key
    assert "sliding_window" not in info["config"]
    assert info["config"]["dtype"] == "float16"
    assert info["output_bytes"] == 2 * 10_731_524_096


def test_solar_recipe_file_equals_preset():
    recipe = yaml.safe_load((ROOT / "configs/solar-10.7b.yaml").read_text())
    preset = PRESETS["solar"]
    assert {k: recipe[k] for k in preset} == preset
    a = dus.api.plan(str(ROOT / "configs/mistral-7b-v0.1.json"), preset="solar")
    b = dus.api.plan(str(ROOT / "configs/mistral-7b-v0.1.json"), config=str(ROOT / "configs/solar-10.7b.yaml"))
    assert a.to_json() == b.to_json()


def test_plan_reads_headers_only(tmp_path, run_dus):
    save_model("llama", tmp_path / "src")
    # Zero the weights' bytes: the plan must not notice, it reads headers only.
    path = tmp_path / "src/model.safetensors"
    size = path.stat().st_size
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    with open(path, "r+b") as f:
        f.seek(8 + header_len)
        f.write(b"\0" * (size - 8 - header_len))
    code, out, err = run_dus("plan", tmp_path / "src", "--overlap", "1", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["num_layers"] == 6
    assert info["layers"][3] == {"index": 3, "source_layer": 1, "source": "base", "op": "copy", "new": False}
    assert info["output_bytes"] == 4 * info["num_parameters"]  # float32
    layer_params = (info["source_num_parameters"] - _non_layer_params(tmp_path / "src")) // 4
    assert info["num_parameters"] == info["source_num_parameters"] + 2 * layer_params
    code, out, err = run_dus("plan", tmp_path / "src", "--layers", "0:2,1,1,2:4")
    assert code == 0 and "0-1  <-  base 0-1 (copy)" in out and "6 layers" in out


def _non_layer_params(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys() if ".layers." not in k)


def _prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def test_recipe_maps():
    assert [l.source_layer for l in recipes.dus(32, 8)] == list(range(24)) + list(range(8, 32))
    assert [l.source_layer for l in recipes.dus(4, 0)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert recipes.parse_layer_spec("0:8,7,7,8:16", 16) == list(range(8)) + [7, 7] + list(range(8, 16))
    assert [l.source_layer for l in recipes.stack(3, 3)] == [0, 1, 2] * 3
    assert [l.source_layer for l in recipes.interleave(3, 2)] == [0, 0, 1, 1, 2, 2]
    idus = [l.source_layer for l in recipes.idus(32, 8)]
    assert idus == [*range(0, 8), *range(8, 16), *range(8, 16), *range(16, 24), *range(16, 24), *range(24, 32)]
    assert len(idus) == 48
    expanded = recipes.expand(8, 2, ("self_attn.o_proj", "mlp.down_proj"))
    assert [l.source_layer for l in expanded] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    assert [l.new for l in expanded] == [False] * 4 + [True] + [False] * 4 + [True]
    assert [l.op for l in expanded if l.new] == ["zero", "zero"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: recipes.dus(4, -1), "must be >= 0"),
        (lambda: recipes.dus(4, 4), "leaves nothing"),
        (lambda: recipes.parse_layer_spec("0:5", 4), "valid layers are 0..3"),
        (lambda: recipes.parse_layer_spec("7", 4), "valid layers are 0..3"),
        (lambda: recipes.parse_layer_spec("a:b", 4), "cannot parse"),
        (lambda: recipes.parse_layer_spec("3:1", 4), "empty"),
        (lambda: recipes.idus(10, 4), "equal groups"),
        (lambda: recipes.expand(8, 3, ("o",)), "divide"),
    ],
)
def test_bad_plans_are_refused(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_config_remaps_per_layer_and_index_lists():
    config = {
        "num_hidden_layers": 4,
        "layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
        "max_window_layers": 2,
        "no_rope_layers": [1, 0, 1, 0],
        "mlp_only_layers": [0, 3],
        "intermediate_size": [10, 20, 30, 40],
        "torch_dtype": "bfloat16",
        "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0],
    }
    out = output_config(config, [0, 1, 2, 1, 2, 3], dtype="float16")
    assert out["num_hidden_layers"] == 6
    assert out["layer_types"] == [
        "full_attention",
        "full_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
    ]
    assert out["max_window_layers"] == 2
    assert out["no_rope_layers"] == [1, 0, 1, 0, 1, 0]
    assert out["mlp_only_layers"] == [0, 5]
    assert out["intermediate_size"] == [10, 20, 30, 20, 30, 40]
    assert out["activation_sparsity_pattern"] == [0.95, 0.95, 0.0, 0.95, 0.0, 0.0]  # no "layer" in its name
    assert out["dtype"] == out["torch_dtype"] == "float16"
    assert config["num_hidden_layers"] == 4  # input untouched


def test_config_formula_the_plan_breaks_is_refused():
    jamba = {
        "num_hidden_layers": 8,
        "attn_layer_period": 4,
        "attn_layer_offset": 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    }
    # repeating whole periods keeps the pattern: accepted
    assert output_config(jamba, list(range(8)) + list(range(8)))["num_hidden_layers"] == 16
    with pytest.raises(InputError, match="attn_layer_period"):
        output_config(jamba, [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 6, 7])
    with pytest.raises(InputError, match="decoder_sparse_step"):
        output_config({"num_hidden_layers": 4, "decoder_sparse_step": 2}, [0, 1, 1, 2, 3])


def test_qwen2_sliding_layers_survive_build(tmp_path):
    import transformers

    save_model("qwen2", tmp_path / "src")
    dus.api.build(str(tmp_path / "src"), tmp_path / "out", layers="2:4,0:2")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    assert config.num_hidden_layers == 4
