"""Sparse upcycling (dus upcycle, dus build --experts): dense -> MoE, exact for copy, as documented otherwise."""

import json
import shutil

import pytest
import torch
import transformers
from models import ARCHITECTURES, assert_verified, load_tensors, reference_model, save_model

import dus.api

TARGETS = {
    "llama": "mixtral",
    "mistral": "mixtral",
    "qwen2": "qwen2_moe",
    "qwen3": "qwen3_moe",
    "olmo2": "flex_olmo",
    "hunyuan_v1_dense": "hunyuan_v1_moe",
}
IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 90, 44, 3, 27], [70, 9, 14, 55, 21, 36, 6, 81, 48, 30]])


def _load(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _greedy(model) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            IDS[:1, :6], max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None
        )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Tiny random dense models of every supported family (Qwen3 with a head_dim apart from hidden/heads,
    Llama with tied embeddings as SmolLM2 has)."""
    ARCHITECTURES.setdefault(
        "qwen3_wide_heads", lambda: transformers.Qwen3Config(**{**ARCHITECTURES["qwen3"]().to_dict(), "head_dim": 16})
    )
    ARCHITECTURES.setdefault(
        "llama_tied",
        lambda: transformers.LlamaConfig(**{**ARCHITECTURES["llama"]().to_dict(), "tie_word_embeddings": True}),
    )
    ARCHITECTURES.setdefault(
        "hunyuan_v1_dense",
        lambda: transformers.HunYuanDenseV1Config(
            **{**ARCHITECTURES["llama"]().to_dict(), "model_type": "hunyuan_v1_dense"}
        ),
    )
    root = tmp_path_factory.mktemp("dense")
    return {arch: (root / arch, save_model(arch, root / arch)) for arch in (*TARGETS, "qwen3_wide_heads", "llama_tied")}


@pytest.mark.parametrize("arch", [*TARGETS, "qwen3_wide_heads", "llama_tied"])
def test_copy_upcycling_computes_the_dense_model(arch, sources, tmp_path):
    source, dense = sources[arch]
    out = tmp_path / "moe"
    record = dus.api.upcycle(str(source), out, experts=4, top_k=2)
    # computed: the four routers (and Qwen2-MoE's zero shared down projection and gate); every expert a byte copy
    assert_verified(out, 4, computed={"qwen2": 12, "hunyuan_v1_dense": 8}.get(arch, 4))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == (TARGETS.get(arch) or TARGETS[arch.split("_")[0]])
    moe = _load(out)
    with torch.no_grad():
        assert _relative(moe(IDS).logits, dense(IDS).logits) < 1e-5
    assert torch.equal(_greedy(moe), _greedy(dense))
    written, original = load_tensors(out), load_tensors(source)
    experts = [name for name in written if ".experts." in name]
    assert len(experts) == 4 * 4 * 3
    for name, entry in record["provenance"].items():
        if "copy" in entry:
            assert torch.equal(written[name], original[entry["copy"]]), name
    assert record["output"]["active_parameters"] < record["output"]["total_parameters"]


def test_depth_and_experts_in_one_plan_equal_the_in_memory_reference(sources, tmp_path):
    source, dense = sources["llama"]
    out = tmp_path / "dus-moe"
    dus.api.build(str(source), out, overlap=1, experts=8, top_k=2)  # 4 layers -> 0..2 + 1..3
    assert_verified(out, 6, computed=6)
    reference = reference_model(dense, [0, 1, 2, 1, 2, 3])
    with torch.no_grad():
        assert _relative(_load(out)(IDS).logits, reference(IDS).logits) < 1e-5


def test_split_with_every_expert_active_computes_the_dense_model(sources, tmp_path):
    source, dense = sources["mistral"]
    out = tmp_path / "split"
    record = dus.api.upcycle(str(source), out, experts=4, top_k=4, expert_init="split")
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 48 // 4
    # gate/up rows are byte ranges of the dense tensors (copies); down columns and the zero router are computed
    assert_verified(out, 4, computed=4 * 4 + 4)
    assert record["provenance"]["model.layers.0.block_sparse_moe.experts.1.w1.weight"] == {
        "copy": "model.layers.0.mlp.gate_proj.weight",
        "rows": [12, 24],
    }
    with torch.no_grad():
        assert _relative(_load(out)(IDS).logits, dense(IDS).logits) < 1e-5


def test_split_refuses_an_expert_count_that_does_not_divide_the_neurons(sources, tmp_path):
    with pytest.raises(dus.api.InputError, match="divides"):
        dus.api.upcycle(str(sources["llama"][0]), tmp_path / "x", experts=5, top_k=5, expert_init="split")
    assert not (tmp_path / "x").exists()


def test_split_is_refused_where_the_shared_expert_shares_the_experts_size(sources, tmp_path):
    with pytest.raises(dus.api.InputError, match="shared MLP"):
        dus.api.upcycle(str(sources["hunyuan_v1_dense"][0]), tmp_path / "x", experts=4, top_k=4, expert_init="split")


def test_drop_reinitialises_the_recorded_share_of_neurons_seeded(sources, tmp_path):
    source, dense = sources["llama"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    record = dus.api.upcycle(str(source), a, experts=4, top_k=2, expert_init="drop", drop_ratio=0.25, expert_seed=7)
    dus.api.upcycle(str(source), b, experts=4, top_k=2, expert_init="drop", drop_ratio=0.25, expert_seed=7)
    dus.api.upcycle(str(source), c, experts=4, top_k=2, expert_init="drop", drop_ratio=0.25, expert_seed=8)
    assert_verified(a, 4, computed=4 + 4 * 4 * 3)  # verify recomputes every seeded tensor
    ta, tb, tc, original = load_tensors(a), load_tensors(b), load_tensors(c), load_tensors(source)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # the same seed: the same model
    gate = ta["model.layers.0.block_sparse_moe.experts.2.w1.weight"]
    down = ta["model.layers.0.block_sparse_moe.experts.2.w2.weight"]
    dense_gate = original["model.layers.0.mlp.gate_proj.weight"]
    dense_down = original["model.layers.0.mlp.down_proj.weight"]
    changed_rows = (gate != dense_gate).any(dim=1)
    assert changed_rows.sum().item() == 12  # 25 % of 48 neurons
    assert torch.equal(changed_rows, (down != dense_down).any(dim=0))  # the same neurons in down's columns
    assert not torch.equal(gate, ta["model.layers.0.block_sparse_moe.experts.3.w1.weight"])  # experts differ
    assert not torch.equal(gate, tc["model.layers.0.block_sparse_moe.experts.2.w1.weight"])  # seeds differ
    entry = record["provenance"]["model.layers.0.block_sparse_moe.experts.2.w1.weight"]
    assert entry["op"] == "moe_drop" and entry["params"]["ratio"] == 0.25 and entry["params"]["seed"] == 7
    assert record["plan"]["moe"]["function_preserved"] == "no"
    assert "no longer computes" in (a / "README.md").read_text()
    with torch.no_grad():
        assert _relative(_load(a)(IDS).logits, dense(IDS).logits) > 1e-3


def test_noise_adds_seeded_noise_of_the_stated_scale(sources, tmp_path):
    source, _ = sources["qwen3"]
    out = tmp_path / "noise"
    dus.api.upcycle(str(source), out, experts=2, top_k=1, expert_init="noise", noise_scale=0.1)
    assert_verified(out, 4, computed=4 + 4 * 2 * 3)
    written, original = load_tensors(out), load_tensors(source)
    dense = original["model.layers.1.mlp.up_proj.weight"]
    delta = written["model.layers.1.mlp.experts.0.up_proj.weight"] - dense
    assert 0.07 < (delta.std() / (0.1 * dense.std())).item() < 1.3


def test_qwen2_moe_keeps_the_function_through_a_zero_shared_expert(sources, tmp_path):
    out = tmp_path / "q2"
    record = dus.api.upcycle(str(sources["qwen2"][0]), out, experts=2, top_k=1)
    provenance = record["provenance"]
    assert provenance["model.layers.0.mlp.shared_expert.down_proj.weight"] == {"zero": True}
    gate = provenance["model.layers.0.mlp.shared_expert_gate.weight"]
    assert gate.get("op") == "moe_shared_gate", gate  # not zero: llama.cpp's sigmoid is silu(x) / x
    assert load_tensors(out)["model.layers.0.mlp.shared_expert_gate.weight"].abs().min() > 0
    shared_gate = provenance["model.layers.0.mlp.shared_expert.gate_proj.weight"]
    assert shared_gate == {"copy": "model.layers.0.mlp.gate_proj.weight"}
    assert json.loads((out / "config.json").read_text())["norm_topk_prob"] is True


def test_plan_shows_the_expert_layout_and_active_parameters(sources, run_dus):
    code, out, err = run_dus("plan", sources["llama"][0], "--layers", "0:4", "--experts", "8", "--top-k", "2")
    assert code == 0, err
    assert "experts:     8 per layer, top-2, init copy" in out
    assert "model.layers.N.block_sparse_moe.experts.{0..7}.{w1,w3,w2}.weight" in out
    code, out, err = run_dus("plan", sources["llama"][0], "--layers", "0:4", "--experts", "8", "--json")
    info = json.loads(out)["moe"]
    # each layer: 8 experts of 3 x 32 x 48 weights, 2 active; so 6 x 4608 x 4 layers fewer active
    assert info["total_parameters"] - info["active_parameters"] == 6 * 3 * 32 * 48 * 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experts", "1"], "--experts must be at least 2"),
        (["--experts", "4", "--top-k", "5"], "--top-k must be between 1 and the number of experts"),
        (["--experts", "4", "--init", "magic"], "unknown expert initialisation"),
    ],
)
def test_bad_options_are_one_error_line_and_nothing_written(args, message, sources, run_dus, tmp_path):
    code, out, err = run_dus("upcycle", sources["llama"][0], tmp_path / "out", *args)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arch, message",
    [
        ("mixtral", "already a mixture of experts"),
        ("gpt2", "cannot upcycle gpt2"),
        ("gemma2", "cannot upcycle gemma2"),
    ],
)
def test_sources_without_an_moe_counterpart_are_refused(arch, message, run_dus, tmp_path):
    save_model(arch, tmp_path / "src")
    code, out, err = run_dus("upcycle", tmp_path / "src", tmp_path / "out", "--experts", "4")
    last = err.strip().splitlines()[-1]  # (saving the source printed a progress bar)
    assert code == 2 and last.startswith("error: ") and message in last and err.count("error") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_k": 2}, "--top-k is an upcycling option: it needs --experts E"),
        ({"experts": 4, "drop_ratio": 0.3}, "--drop-ratio is for --expert-init drop, not copy"),
    ],
)
def test_expert_options_that_would_be_ignored_are_refused(options, message, sources, tmp_path):
    with pytest.raises(dus.api.InputError, match=message):
        dus.api.build(str(sources["llama"][0]), tmp_path / "out", layers="0:4", **options)
    assert not (tmp_path / "out").exists()


def test_a_recipe_file_grows_depth_and_experts(sources, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"source: {sources['llama'][0]}\noverlap: 1\nexperts: 4\ntop_k: 1\nexpert_init: noise\nnoise_scale: 0.05\n"
    )
    record = dus.api.build(None, tmp_path / "out", config=str(recipe))
    assert record["plan"]["moe"]["noise_scale"] == 0.05 and record["output"]["num_layers"] == 6
    assert_verified(tmp_path / "out", 6, computed=6 + 6 * 4 * 3)


def test_an_moe_config_that_computes_a_layer_differently_is_refused(sources):
    """The build asks transformers whether the MoE model matches the dense one outside the MLPs."""
    from dus.checks.upcycle_check import check_moe
    from dus.plan.config import moe_request
    from dus.plan.make import make_plan
    from dus.plan.options import PlanOptions
    from dus.read.source import open_source

    source = open_source(str(sources["qwen3_wide_heads"][0]))
    options = PlanOptions(source=source.ref, recipe="stack", factor=1, experts=4, top_k=2)
    plan = make_plan({"base": source}, options)  # make_plan reads the expert options
    request = moe_request(plan, source)
    check_moe(**request)  # as planned: the same attention, norms and rotary embedding
    del request["moe_config"]["head_dim"]  # qwen3_moe would then derive hidden/heads = 8, not 16
    with pytest.raises(dus.api.InputError, match="refusing to upcycle"):
        check_moe(**request)


def test_a_layer_without_a_gated_mlp_is_refused():
    from dus.plan.upcycle import mlp_suffixes

    with pytest.raises(dus.api.InputError, match="no recognisable gated MLP"):
        mlp_suffixes({"mlp.fc1.weight": "x", "mlp.fc2.weight": "y", "self_attn.q_proj.weight": "z"})


def test_llama_with_attention_bias_is_refused_for_mixtral(tmp_path, run_dus):
    ARCHITECTURES.setdefault(
        "llama_bias", lambda: transformers.LlamaConfig(**{**ARCHITECTURES["llama"]().to_dict(), "attention_bias": True})
    )
    save_model("llama_bias", tmp_path / "src")
    code, out, err = run_dus("upcycle", tmp_path / "src", tmp_path / "out", "--experts", "4")
    assert code == 2 and "attention_bias = True" in err, err


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_upcycles_into_an_exact_mixtral(smollm2, tmp_path):
    out = tmp_path / "smol-moe"
    # 4 experts keep the float32 MoE under 2 GB; each expert is the same byte copy whatever their number
    dus.api.upcycle(str(smollm2), out, experts=4, top_k=2, verify=True)  # bf16 byte copies
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=12, do_sample=False, use_cache=True)
    dense = _load(smollm2)
    with torch.no_grad():
        want, want_tokens = dense(ids).logits, dense.generate(ids, **kwargs)
    del dense  # one model in memory at a time
    moe = _load(out)
    assert type(moe).__name__ == "MixtralForCausalLM"
    with torch.no_grad():
        assert _relative(moe(ids).logits, want) < 1e-5
        assert torch.equal(moe.generate(ids, **kwargs), want_tokens)


def test_docs_family_table_is_generated_from_the_code():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "upcycle_table.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0, "run scripts/upcycle_table.py"


def test_upcycling_and_verifying_never_import_torch(sources, tmp_path):
    """Every upcycled tensor is a byte copy, zeros, or a numpy operator (dus/write/ops_moe.py): the build
    stays on the torch-free copy path (transformers' checks run in their own child process)."""
    import subprocess
    import sys

    script = (
        "import sys, dus.api\n"
        f"dus.api.upcycle({str(sources['qwen2'][0])!r}, {str(tmp_path / 'out')!r}, experts=4, top_k=2, "
        "expert_init='drop', verify=True)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_mistral_7b_upcycles_into_mixtral_8x7b_parameter_for_parameter():
    """From the config alone: Mistral-7B with 8 experts, top-2, is Mixtral-8x7B's published 46.7B / 12.9B."""
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "configs" / "mistral-7b-v0.1.json"
    info = dus.api.plan(str(config), layers="0:32", experts=8, top_k=2).to_json()["moe"]
    assert (info["total_parameters"], info["active_parameters"]) == (46_702_792_704, 12_879_925_248)


def test_calibrated_split_groups_neurons_that_fire_together_and_keeps_the_function(sources, tmp_path):
    from pydoc_data.topics import topics

    from models import bpe_tokenizer

    source, dense = sources["llama"]
    calibrated = tmp_path / "src"
    shutil.copytree(source, calibrated)
    texts = [topics[k] for k in sorted(topics)[:20]]
    tokenizer = bpe_tokenizer(texts, 96, {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    tokenizer.save_pretrained(calibrated)
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(texts))
    out = tmp_path / "split"
    record = dus.api.upcycle(str(calibrated), out, experts=4, top_k=4, expert_init="split", calibration=str(text))
    clusters = record["plan"]["moe"]["clusters"]
    assert sorted(clusters) == ["0", "1", "2", "3"]
    for cluster in clusters.values():  # every expert exactly a quarter of the 48 neurons
        assert sorted(cluster.count(e) for e in range(4)) == [12, 12, 12, 12]
    assert any(cluster != sorted(cluster) for cluster in clusters.values())  # not the contiguous split
    assert_verified(out, 4, computed=4 + 4 * 4 * 3)  # verify slices by the recorded clusters
    with torch.no_grad():
        assert _relative(_load(out)(IDS).logits, dense(IDS).logits) < 1e-5


def test_width_growth_and_experts_together_keep_the_function(sources, tmp_path):
    """--width (issue 23's HyperCloning) then --experts copy: the widened MLP's tensors become every expert."""
    source, dense = sources["llama"]
    out = tmp_path / "wide-moe"
    record = dus.api.build(str(source), out, recipe="stack", factor=1, width=2, experts=4, top_k=2, verify=True)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["hidden_size"] == 2 * dense.config.hidden_size
    assert config["intermediate_size"] == 2 * dense.config.intermediate_size
    assert record["plan"]["recipe"]["width"] and record["plan"]["moe"]["experts"] == 4
    assert any(".experts.3." in name for name in record["computed"])  # widened tensors copied into each expert
    moe = _load(out)
    with torch.no_grad():
        assert _relative(moe(IDS).logits, dense(IDS).logits) < 1e-5
    assert torch.equal(_greedy(moe), _greedy(dense))


def test_layer_initialisers_and_experts_together(sources, tmp_path):
    """--init (issue 23's initialisers of inserted layers) with --experts: copy takes the initialised MLP into every
    expert; an init that needs the dense bytes (drop) refuses a computed MLP with the reason."""
    source, _ = sources["llama"]
    record = dus.api.build(
        str(source),
        tmp_path / "a",
        recipe="expand",
        new_layers=2,
        insert_at="0,1",
        init="aligned-average",
        experts=2,
        verify=True,
    )
    assert record["output"]["num_layers"] == 6 and record["plan"]["moe"]["experts"] == 2
    with pytest.raises(dus.api.InputError, match="needs the dense MLP of output layer"):
        dus.api.plan(
            str(source),
            recipe="expand",
            new_layers=2,
            insert_at="0,1",
            init="aligned-average",
            experts=2,
            expert_init="drop",
        )
