"""config.json is untrusted input: every field dus reads or remaps is checked, and the
checkpoint must hold what the config describes, before anything is planned or written."""

import json
import shutil

import pytest
import yaml
from models import save_model
from refusal import assert_refused
from safetensors.torch import load_file, save_file

import dus.api
from dus.checks import config_check, transformers_check
from dus.checks import run as checks_module
from dus.core.vocabulary import LAYER_FORMULAS
from dus.errors import InputError


def _source(llama_source, tmp_path, **patch):
    """A copy of the tiny llama with config.json fields replaced (None removes one)."""
    src = tmp_path / "src"
    shutil.copytree(llama_source, src)
    config = json.loads((src / "config.json").read_text())
    config.update(patch)
    (src / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return src


def _assert_refused(result, fragment, tmp_path):
    code, _, err = result
    assert_refused(code, err, fragment, outputs=tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory either


BAD_CONFIGS = {
    "layer_types_too_short": (
        {"layer_types": ["full_attention"]},
        "layer_types has 1 entry but num_hidden_layers is 4",
    ),
    "layer_types_empty": ({"layer_types": []}, "layer_types has 0 entries but num_hidden_layers is 4"),
    "layer_types_string": (
        {"layer_types": "full_attention"},
        "layer_types is 'full_attention' (str); expected a list of 4",
    ),
    "layer_types_ints": ({"layer_types": [0, 1, 0, 1]}, "layer_types holds 0; expected layer type names"),
    "no_rope_layers_mixed": ({"no_rope_layers": [1, "x", 1, 1]}, "no_rope_layers mixes number and string"),
    "hidden_size_string": ({"hidden_size": "32"}, "hidden_size is '32' (str); expected a positive integer"),
    "vocab_size_negative": ({"vocab_size": -5}, "vocab_size is -5 (int); expected a positive integer"),
    "heads_zero": ({"num_attention_heads": 0}, "num_attention_heads is 0 (int)"),
    "size_overflows": (
        {"vocab_size": 10**30},
        "vocab_size is 1000000000000000000000000000000 (int); expected a positive",
    ),
    "unknown_dtype": ({"torch_dtype": "float13"}, "torch_dtype is 'float13'; expected a torch dtype name"),
    "layer_count_bool": ({"num_hidden_layers": True}, "num_hidden_layers is True (bool); expected a positive integer"),
    "layer_count_string": ({"num_hidden_layers": "4"}, "num_hidden_layers is '4' (str)"),
    "unknown_model_type": ({"model_type": "nosuchmodel"}, "model_type is 'nosuchmodel', which transformers"),
    "no_model_type": ({"model_type": None}, "no model_type"),
    "index_list_out_of_range": (
        {"mlp_only_layers": [99]},
        "mlp_only_layers holds layer 99, but num_hidden_layers is 4",
    ),
    "index_list_negative": ({"mlp_only_layers": [-1]}, "mlp_only_layers holds layer -1"),
    "index_list_bool": ({"mlp_only_layers": [True]}, "mlp_only_layers holds True (bool); expected layer indices"),
    "named_index_list_out_of_range": ({"swa_extra_layers": [1, 7]}, "swa_extra_layers holds layer 7"),
    "period_zero": (
        {"attn_layer_period": 0, "attn_layer_offset": 0},
        "attn_layer_period is 0 (int); expected a positive",
    ),
    "offset_past_period": (
        {"attn_layer_period": 4, "attn_layer_offset": 5},
        "attn_layer_offset is 5 (int); expected an integer in 0..3",
    ),
    "sparse_step_zero": ({"decoder_sparse_step": 0}, "decoder_sparse_step is 0"),
    "moe_freq_zero": ({"moe_layer_freq": 0}, "moe_layer_freq is 0"),
    "first_k_negative": ({"first_k_dense_replace": -1}, "first_k_dense_replace is -1 (int); expected a non-negative"),
    "nan": ({"rope_theta": float("nan")}, "field rope_theta is NaN: JSON has no such value"),
    "infinity_nested": (
        {"rope_parameters": {"rope_type": "default", "rope_theta": float("inf")}},
        "rope_parameters.rope_theta is Infinity",
    ),
    "heads_do_not_divide": (
        {"num_attention_heads": 5, "num_key_value_heads": 5},
        "transformers refuses this llama config",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_refused_by_build(case, llama_source, tmp_path, run_dus):
    patch, fragment = BAD_CONFIGS[case]
    src = _source(llama_source, tmp_path, **patch)
    result = run_dus("build", src, tmp_path / "out", "--overlap", "1")
    _assert_refused(result, fragment, tmp_path)
    assert str(src / "config.json") in result[2]  # the message names the file


def test_plan_refuses_as_build_does(llama_source, tmp_path, run_dus):
    src = _source(llama_source, tmp_path, vocab_size=-5)
    _assert_refused(run_dus("plan", src, "--overlap", "1"), "vocab_size is -5", tmp_path)
    with pytest.raises(InputError, match="vocab_size is -5"):
        dus.api.plan(str(src), overlap=1)


def test_bare_config_is_checked_before_its_model_is_made(llama_source, tmp_path, run_dus, monkeypatch):
    import dus.read.source

    def no_model(config):
        raise AssertionError("a model was built from an unchecked config")

    monkeypatch.setattr(dus.read.source, "meta_tensors", no_model)
    src = _source(llama_source, tmp_path, num_hidden_layers=10**7)
    _assert_refused(
        run_dus("plan", src / "config.json"), "num_hidden_layers is 10,000,000; dus handles at most 4,096", tmp_path
    )


@pytest.mark.parametrize(
    "layers, fragment",
    [
        (10**7, "num_hidden_layers is 10,000,000; dus handles at most 4,096 layers"),
        (1000, "num_hidden_layers is 1000 in config.json, but the checkpoint has only"),
    ],
)
def test_layer_count_is_bounded_before_the_stack_is_searched(
    layers, fragment, llama_source, tmp_path, run_dus, monkeypatch
):
    """A huge layer count is refused from the config and the tensor count, before
    finding the stack builds anything of size n (98 s and 6.7 GB for 10^7, before)."""
    import dus.read.source

    def no_search(names, n):
        raise AssertionError(f"searched the tensor names for {n} layers")

    monkeypatch.setattr(dus.read.source, "find_layer_prefix", no_search)
    src = _source(llama_source, tmp_path, num_hidden_layers=layers)
    _assert_refused(run_dus("build", src, tmp_path / "out"), fragment, tmp_path)


def test_plan_size_is_bounded_before_it_is_expanded(llama_source, tmp_path, run_dus):
    _assert_refused(
        run_dus("plan", llama_source, "--recipe", "stack", "--factor", "2000"),
        "the plan has 8,000 layers; dus builds at most 4,096",
        tmp_path,
    )
    # 4 * 10**9 layers: refused from the factor, before a list of that size is made
    _assert_refused(
        run_dus("plan", llama_source, "--recipe", "stack", "--factor", str(10**9)),
        "the plan has 4,000,000,000 layers",
        tmp_path,
    )


def _recipe(tmp_path, body):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body) if isinstance(body, dict) else body)
    return path


def test_overrides_are_checked_in_the_output_config(llama_source, tmp_path, run_dus):
    cases = {
        "rope_theta: .nan": "rope_theta is nan; expected a finite number",
        "num_hidden_layers: 99": "num_hidden_layers is 99, but the plan has 6 layers",
        "hidden_size: wide": "hidden_size is 'wide' (str)",
        "layer_types: [full_attention]": "layer_types has 1 entry but num_hidden_layers is 6",
        "model_type: gpt2": "has no tensor for",  # transformers would build other weights from this config
    }
    for override, fragment in cases.items():
        recipe = _recipe(tmp_path, f"source: {llama_source}\noverlap: 1\nconfig_overrides:\n  {override}\n")
        result = run_dus("build", "--config", recipe, tmp_path / "out")
        _assert_refused(result, fragment, tmp_path)
        assert "the planned config.json" in result[2]
    recipe = _recipe(tmp_path, f"source: {llama_source}\noverlap: 1\nconfig_overrides: [1, 2]\n")
    _assert_refused(
        run_dus("build", "--config", recipe, tmp_path / "out"), "config_overrides must be a mapping", tmp_path
    )


def test_every_source_of_a_recipe_is_checked(llama_source, tmp_path, run_dus):
    other = _source(llama_source, tmp_path, mlp_only_layers=[4])
    recipe = _recipe(
        tmp_path,
        {
            "sources": {"base": str(llama_source), "other": str(other)},
            "layers": [{"range": [0, 4]}, {"layer": 3, "source": "other"}],
        },
    )
    _assert_refused(run_dus("build", "--config", recipe, tmp_path / "out"), "mlp_only_layers holds layer 4", tmp_path)


def test_checkpoint_missing_a_weight_is_refused(tmp_path, run_dus, capsys):
    """A sharded checkpoint whose index (and shard) lacks the untied LM head."""
    src = tmp_path / "src"
    save_model("llama", src, max_shard_size="20KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = src / index["weight_map"].pop("lm_head.weight")
    tensors = load_file(shard)
    del tensors["lm_head.weight"]
    save_file(tensors, shard, metadata={"format": "pt"})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    capsys.readouterr()  # save_pretrained's progress bar
    _assert_refused(
        run_dus("build", src, tmp_path / "out", "--overlap", "1"),
        "the checkpoint has no tensor for 'lm_head.weight', which LlamaForCausalLM needs",
        tmp_path,
    )


@pytest.mark.parametrize("arch", ["gpt2", "gemma2", "mixtral"])
def test_tied_and_fused_weights_are_covered(arch, tmp_path):
    """A tied head needs no tensor of its own; per-expert tensors cover the fused experts
    transformers 5 loads them into: these checkpoints are complete."""
    save_model(arch, tmp_path / "src")
    resolved = dus.api.plan(str(tmp_path / "src"), overlap=1)
    assert len(resolved.plan.layers) == 6
    names = {s.name for s in resolved.tensors}
    transformers_check.check_one(resolved.config, "out", names, "out")
    head = next(n for n in names if "wte" in n or "embed_tokens" in n)
    with pytest.raises(InputError, match="has no tensor for"):
        transformers_check.check_one(resolved.config, "out", names - {head}, "out")


def test_every_layer_formula_field_is_checked():
    fields = {key for keys, _ in LAYER_FORMULAS.values() for key in keys}
    checked = (
        set(config_check.PERIODS)
        | set(config_check.OFFSETS)
        | set(config_check.COUNTS)
        | set(config_check.LAST_INDEXES)
    )
    assert fields <= checked, fields - checked
    kinds = [
        set(config_check.PERIODS),
        set(config_check.OFFSETS),
        set(config_check.COUNTS),
        set(config_check.LAST_INDEXES),
    ]
    assert sum(map(len, kinds)) == len(checked)  # one kind each
    assert set(config_check.OFFSETS.values()) <= set(config_check.PERIODS)  # an offset lies below a period
    assert {"moe_layer_interval", "decoder_sparse_step"} <= set(config_check.PERIODS)
    assert "first_k_dense_replace" in config_check.COUNTS


def test_valid_configs_pass_and_keep_building(llama_source, tmp_path, run_dus):
    src = _source(
        llama_source,
        tmp_path,
        mlp_only_layers=[0, 3],
        no_rope_layers=[1, 0, 1, 1],
        layer_types=["full_attention"] * 4,
        first_k_dense_replace=0,
    )
    code, _, err = run_dus("build", src, tmp_path / "out", "--overlap", "1", "--verify")
    assert code == 0, err
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["mlp_only_layers"] == [0, 5] and config["no_rope_layers"] == [1, 0, 1, 0, 1, 1]


def test_split_weights_are_covered_by_their_fused_tensor():
    """A checkpoint's fused query_key_value loads into q, k and v (a transformers 5 split):
    the names transformers itself saves cover the model, and without it all three are missing."""
    import torch
    import transformers
    from transformers.core_model_loading import revert_weight_conversion

    if "sarvam_moe" not in transformers.CONFIG_MAPPING:
        pytest.skip("this transformers has no sarvam_moe")
    config = json.loads(transformers.CONFIG_MAPPING["sarvam_moe"](num_hidden_layers=2).to_json_string())
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    saved = set(revert_weight_conversion(model, model.state_dict()))
    assert "model.layers.0.attention.query_key_value.weight" in saved
    transformers_check.check_one(config, "src", saved, "src")
    with pytest.raises(InputError, match=r"no tensor for 'model.layers.0.self_attn.q_proj.weight' \(and 2 more\)"):
        transformers_check.check_one(config, "src", saved - {"model.layers.0.attention.query_key_value.weight"}, "src")


def test_checks_run_in_a_child_where_torch_is_not_loaded(llama_source):
    """The build process never imports torch (tests/test_memory.py): there the transformers
    checks run in a child process, whose refusal is the same one-line InputError."""
    config = json.loads((llama_source / "config.json").read_text())
    checks = [
        {"config": config, "where": "a.json"},
        {"config": {**config, "num_attention_heads": 5, "num_key_value_heads": 5}, "where": "b.json"},
    ]
    with pytest.raises(InputError, match=r"^b.json: transformers refuses this llama config: .*multiple"):
        checks_module.PendingChecks({"checks": checks, "layers": None}, in_child=True).result()


def test_yaml_values_json_cannot_hold_are_refused(llama_source, tmp_path, run_dus):
    recipe = _recipe(tmp_path, f"source: {llama_source}\noverlap: 1\nconfig_overrides:\n  release: 2024-01-01\n")
    _assert_refused(
        run_dus("build", "--config", recipe, tmp_path / "out"),
        "release is datetime.date(2024, 1, 1) (date); expected a JSON value",
        tmp_path,
    )


def test_a_build_refused_by_transformers_while_copying_leaves_nothing(llama_source, tmp_path):
    """A build (no torch in the process) starts the copy while transformers checks the plan in a
    child process; the child's refusal is the build's one-line error, and nothing is published."""
    import subprocess
    import sys

    src = _source(llama_source, tmp_path, num_attention_heads=5, num_key_value_heads=5)
    result = subprocess.run(
        [sys.executable, "-m", "dus", "build", str(src), str(tmp_path / "out"), "--overlap", "1"],
        capture_output=True,
        text=True,
    )
    _assert_refused(
        (result.returncode, result.stdout, result.stderr), "transformers refuses this llama config", tmp_path
    )
