"""The structural check (dus.checks.equivalence) and the config shapes it confirms."""

import json

import pytest
import transformers
from models import COMMON
from refusal import assert_refused

from dus.checks.equivalence import check_layers, layer_differences
from dus.errors import InputError
from dus.plan.config import output_config

PREFIX = "model.layers."
OVERLAP1 = [0, 1, 2, 1, 2, 3]  # --overlap 1 of 4 layers


def _config(model_type: str, **extra) -> dict:
    return transformers.AutoConfig.for_model(model_type, **{**COMMON, **extra}).to_dict()


def _save(model_type: str, directory, **extra):
    config = transformers.AutoConfig.for_model(model_type, **{**COMMON, **extra})
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def test_copied_layers_of_a_plain_decoder_are_equal():
    # layer_idx differs in every moved layer (3 <- 1, ...) and is the one thing allowed to
    config = _config("llama")
    assert layer_differences(config, output_config(config, OVERLAP1), OVERLAP1, PREFIX) == []


def test_index_dependent_layers_are_refused_then_recorded_when_allowed(tmp_path, run_dus, capsys):
    _save("diffllama", tmp_path / "src")  # DiffLlama: lambda_init = 0.8 - 0.6 exp(-0.3 layer_idx)
    capsys.readouterr()  # save_pretrained's progress bar
    code, out, err = run_dus("plan", tmp_path / "src", "--overlap", "1")
    err = assert_refused(code, err)
    assert err.startswith(
        "error: output layer 3 (from source layer 1) would differ: self_attn.lambda_init 0.556058 != "
        "0.355509; this architecture computes it from the layer index"
    )
    assert err.endswith("(2 more difference(s)); pass --allow-index-dependent to build it anyway")

    code, out, err = run_dus("plan", tmp_path / "src", "--overlap", "1", "--allow-index-dependent", "--json")
    assert code == 0 and len(json.loads(out)["index_dependent"]) == 3 and err.count("warning: output layer") == 3

    code, out, err = run_dus("build", tmp_path / "src", tmp_path / "out", "--overlap", "1", "--allow-index-dependent")
    assert code == 0, err
    assert err.count("warning: output layer") == 3  # layers 3, 4, 5 moved; 0-2 kept their index
    record = json.loads((tmp_path / "out/dus_plan.json").read_text())
    assert record["allow_index_dependent"] is True
    assert [d.split(" would")[0] for d in record["index_dependent"]] == [
        "output layer 3 (from source layer 1)",
        "output layer 4 (from source layer 2)",
        "output layer 5 (from source layer 3)",
    ]
    card = (tmp_path / "out/README.md").read_text()
    assert "--allow-index-dependent" in card and "self_attn.lambda_init" in card
    code, out, err = run_dus("verify", tmp_path / "out")
    assert code == 0, err
    assert "built with --allow-index-dependent: 3 layer setting(s) differ" in out

    # a record without the allowance does not verify: the layers are not what a copy computes
    del record["allow_index_dependent"]
    (tmp_path / "out/dus_plan.json").write_text(json.dumps(record))
    code, out, err = run_dus("verify", tmp_path / "out")
    assert code == 1 and "self_attn.lambda_init" in err


def test_a_config_that_does_not_reproduce_the_source_is_refused_even_when_allowed():
    config = _config(
        "qwen2",
        layer_types=["full_attention"] * 2 + ["sliding_attention"] * 2,
        use_sliding_window=True,
        sliding_window=4,
    )
    wrong = output_config(config, OVERLAP1)
    wrong["layer_types"] = ["full_attention"] * 6  # as if a per-layer field had not been remapped
    with pytest.raises(
        InputError,
        match=r"output layer 2 \(from source layer 2\) would differ: self_attn.layer_type "
        r"'full_attention' != 'sliding_attention'; the output config does not",
    ):
        check_layers(config, wrong, OVERLAP1, PREFIX, allow_index_dependent=True)


def test_shape_and_outside_differences_are_refused():
    config = _config("llama")
    wrong = {**output_config(config, OVERLAP1), "intermediate_size": 64}
    found = layer_differences(config, wrong, OVERLAP1, PREFIX)
    assert "mlp.down_proj.weight shape (32, 64) != (32, 48)" in [d.what for d in found]
    assert not any(d.index_derived for d in found)
    wrong = {**output_config(config, OVERLAP1), "vocab_size": 100}
    with pytest.raises(InputError, match=r"outside its decoder layers: lm_head.weight shape \(100, 32\) != \(96, 32\)"):
        layer_differences(config, wrong, OVERLAP1, PREFIX)


def test_a_config_transformers_cannot_build_is_refused_with_its_message():
    config = _config("llama")
    with pytest.raises(InputError, match="transformers refuses this config: .*no-such-type"):
        check_layers(config, {**output_config(config, OVERLAP1), "model_type": "no-such-type"}, OVERLAP1, PREFIX)


def test_layer_index_maps_are_remapped_in_their_key_style():
    config = {
        "num_hidden_layers": 12,
        "per_layer_config": {"05": {"head_dim": 512}, "11": {"head_dim": 512}},
        "global_layers": {"3": "x"},
        "id2label": {"0": "a", "1": "b"},
        "mtp_layer_map": {"0": 1},
    }
    plan = list(range(12)) + list(range(4, 12))  # 20 layers
    out = output_config(config, plan)
    assert out["per_layer_config"] == {
        "05": {"head_dim": 512},
        "11": {"head_dim": 512},
        "13": {"head_dim": 512},
        "19": {"head_dim": 512},
    }
    assert out["global_layers"] == {"3": "x"}  # unpadded stays unpadded (layer 3 appears once)
    assert out["id2label"] == config["id2label"] and out["mtp_layer_map"] == config["mtp_layer_map"]
    assert output_config({"num_hidden_layers": 4, "per_layer_config": {3: {"a": 1}}}, OVERLAP1)["per_layer_config"] == {
        5: {"a": 1}
    }


def test_a_second_layer_count_follows_the_first():
    out = output_config({"num_hidden_layers": 4, "num_blocks": 4, "num_layers_other": 4}, OVERLAP1)
    assert (out["num_hidden_layers"], out["num_blocks"], out["num_layers_other"]) == (6, 6, 4)


@pytest.mark.parametrize(
    "config, plan, expected",
    [
        # the offset moves with a dropped first layer: source attention layers 2, 6 land at 1, 5
        (
            {"num_hidden_layers": 8, "attn_layer_period": 4, "attn_layer_offset": 2},
            list(range(1, 8)),
            {"attn_layer_offset": 1},
        ),
        # first k dense: source 0,1 dense; plan 0,1,0,1,2,3 makes the first 4 dense
        ({"num_hidden_layers": 4, "first_k_dense_replace": 2}, [0, 1, 0, 1, 2, 3], {"first_k_dense_replace": 4}),
        ({"num_hidden_layers": 4, "num_dense_layers": 1}, OVERLAP1, {"num_dense_layers": 1}),
        # MoE from start to end: the range grows with the stack
        (
            {"num_hidden_layers": 4, "moe_layer_start_index": 1, "moe_layer_end_index": 3, "moe_layer_interval": 1},
            OVERLAP1,
            {"moe_layer_start_index": 1, "moe_layer_end_index": 5},
        ),
        (
            {"num_hidden_layers": 4, "moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 1},
            [1, 2, 3, 0],
            {"moe_layer_start_index": 0, "moe_layer_end_index": 2},
        ),
    ],
)
def test_formula_parameters_are_solved_for_the_new_stack(config, plan, expected):
    out = output_config(config, plan)
    assert {k: out[k] for k in expected} == expected


def test_formula_no_value_expresses_is_refused():
    ernie = {"num_hidden_layers": 4, "moe_layer_start_index": 2, "moe_layer_end_index": 3, "moe_layer_interval": 1}
    with pytest.raises(InputError, match="moe_layer_start_index/moe_layer_end_index/moe_layer_interval"):
        output_config(ernie, [2, 0, 3])  # MoE, dense, MoE: not one range


@pytest.mark.parametrize(
    "model_type, extra, message",
    [
        ("bart", {"is_encoder_decoder": False}, "DUS needs a decoder stack: bart is an encoder-decoder model"),
        ("bert", {}, "DUS needs a decoder stack: transformers builds this bert config's layers with bidirectional"),
    ],
)
def test_encoders_are_refused(model_type, extra, message):
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=96, hidden_size=32, intermediate_size=48, num_attention_heads=4, **extra
    ).to_dict()
    with pytest.raises(InputError, match=message):
        check_layers(config, output_config(config, OVERLAP1), OVERLAP1, "bert.encoder.layer.")  # bart: no output config


def test_a_bert_used_as_decoder_is_checked_not_refused():
    config = transformers.AutoConfig.for_model(
        "bert",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=4,
        is_decoder=True,
    ).to_dict()
    assert check_layers(config, output_config(config, OVERLAP1), OVERLAP1, "bert.encoder.layer.") == []


def test_special_floats_in_config_json_are_decoded_as_transformers_does():
    from dus.checks.transformers_check import meta_model

    config = {**_config("llama"), "rms_norm_eps": {"__float__": "Infinity"}}  # Bamba's time_step_limit has one
    assert meta_model(config).config.rms_norm_eps == float("inf")


def test_an_index_list_naming_every_layer_is_not_a_per_layer_list():
    config = {**_config("llama"), "moe_layers": [0, 1, 2, 3]}  # Llama 4 with interleave_moe_layer_step 1
    assert output_config(config, OVERLAP1)["moe_layers"] == [0, 1, 2, 3, 4, 5]
    assert layer_differences(config, output_config(config, OVERLAP1), OVERLAP1, PREFIX) == []


def test_a_repeating_pattern_is_written_out_in_full():
    out = output_config(
        {"num_hidden_layers": 6, "block_types": ["recurrent", "recurrent", "attention"]}, [0, 1, 2, 3, 2, 3, 4, 5]
    )
    assert out["block_types"] == [
        "recurrent",
        "recurrent",
        "attention",
        "recurrent",
        "attention",
        "recurrent",
        "recurrent",
        "attention",
    ]
