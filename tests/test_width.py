"""Width growth (dus/plan/width.py): the widened model computes the source's function."""

import json

import pytest
import torch
import transformers
from models import ARCHITECTURES, COMMON, load_tensors, reference_model, save_model
from refusal import assert_refused

import dus
import dus.api

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"]
EXTRA = {  # configs beyond tests/models.py: tied LLaMA (SmolLM2's kind), Gemma (v1), untied Gemma-2
    "llama_tied": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=True),
    "gemma": lambda: transformers.GemmaConfig(**COMMON, head_dim=8),
    "gemma2_untied": lambda: transformers.Gemma2Config(
        **COMMON, head_dim=8, sliding_window=6, tie_word_embeddings=False
    ),
}


def _source(tmp_path, arch: str):
    if arch in EXTRA:
        ARCHITECTURES[arch] = EXTRA[arch]
    return save_model(arch, tmp_path / "src")


def _ids():
    return torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(1))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _relative(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _same_function(model, grown, tolerance: float = 1e-5) -> None:
    ids = _ids()
    with torch.no_grad():
        assert _relative(model(ids).logits, grown(ids).logits) < tolerance
    prompt = ids[:1, :6]
    same = dict(max_new_tokens=12, do_sample=False, use_cache=True)
    assert torch.equal(model.generate(prompt, **same), grown.generate(prompt, **same))


@pytest.mark.parametrize("arch", FAMILIES + list(EXTRA))
def test_width_2_keeps_logits_and_cached_greedy_generation(tmp_path, arch):
    model = _source(tmp_path, arch)
    dus.build(tmp_path / "src", tmp_path / "wide", width=2, verify=True)
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert grown.config.hidden_size == 2 * model.config.hidden_size
    assert grown.config.num_attention_heads == 2 * model.config.num_attention_heads
    assert grown.config.num_key_value_heads == 2 * model.config.num_key_value_heads
    assert grown.config.intermediate_size == 2 * model.config.intermediate_size
    assert _head_dim(grown.config) == _head_dim(model.config)
    _same_function(model, grown)


def test_width_3_mlp_width_and_depth_combine(tmp_path):
    """×3 width (not a power of two: scales are inexact) with ×2 MLP on top and a DUS depth plan."""
    model = _source(tmp_path, "llama_tied")
    record = dus.build(tmp_path / "src", tmp_path / "wide", width=3, mlp_width=2, overlap=1, verify=True)
    assert record["plan"]["recipe"]["width"] == {"factor": 3, "mlp_factor": 2, "noise": 0.0, "seed": 0}
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert grown.config.intermediate_size == 6 * model.config.intermediate_size
    assert grown.config.num_hidden_layers == 6
    _same_function(reference_model(model, [0, 1, 2, 1, 2, 3]), grown)


def test_mlp_width_alone_duplicates_neurons_and_splits_the_down_projection(tmp_path):
    model = _source(tmp_path, "qwen2")
    dus.build(tmp_path / "src", tmp_path / "wide", mlp_width=2, verify=True)
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert grown.config.hidden_size == model.config.hidden_size
    down = load_tensors(tmp_path / "wide")["model.layers.0.mlp.down_proj.weight"]
    source = model.model.layers[0].mlp.down_proj.weight.detach()
    assert torch.equal(down, torch.cat([source / 2, source / 2], dim=1))
    _same_function(model, grown)


def test_width_noise_keeps_the_function_within_tolerance_and_is_recorded(tmp_path):
    model = _source(tmp_path, "llama_tied")
    record = dus.build(tmp_path / "src", tmp_path / "wide", width=2, width_noise=0.01, width_seed=7, verify=True)
    assert record["plan"]["recipe"]["width"] == {"factor": 2, "mlp_factor": 1, "noise": 0.01, "seed": 7}
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    _same_function(model, grown, tolerance=1e-4)  # the documented tolerance (docs/recipes.md)
    q = grown.model.layers[0].self_attn.q_proj.weight.detach()
    rows = q.shape[0] // 2
    assert not torch.equal(q[:rows], q[rows:])  # the clones differ ...
    again = dus.build(tmp_path / "src", tmp_path / "again", width=2, width_noise=0.01, width_seed=7)
    assert again["output"]["shards"] == record["output"]["shards"]  # ... reproducibly


def _halves_after_one_step(directory) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's output hidden state, split into its two clone halves, after one SGD step."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    with torch.no_grad():
        hidden = model.eval()(ids, output_hidden_states=True).hidden_states[2]
    half = hidden.shape[-1] // 2
    return hidden[..., :half], hidden[..., half:]


def test_noise_lets_the_clones_diverge_in_training_and_without_it_they_stay_clones(tmp_path):
    _source(tmp_path, "llama")
    dus.build(tmp_path / "src", tmp_path / "plain", width=2)
    dus.build(tmp_path / "src", tmp_path / "noisy", width=2, width_noise=0.05)
    left, right = _halves_after_one_step(tmp_path / "plain")
    assert torch.equal(left, right)
    left, right = _halves_after_one_step(tmp_path / "noisy")
    assert (left - right).abs().max() > 1e-3


def test_verify_recomputes_widened_tensors(tmp_path):
    _source(tmp_path, "llama")
    dus.build(tmp_path / "src", tmp_path / "wide", width=2, width_noise=0.01)
    from dus.verify.check import VerifyError

    checks = dus.api.verify(tmp_path / "wide").checks
    # every tensor is computed (recomputed here); none is a byte copy (LLaMA has no q/k norms)
    assert any(c.startswith("bytes of all tensors match") and "(0 copies, 39 computed)" in c for c in checks), checks
    path = tmp_path / "wide" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # a bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="last|bytes differ|differs"):
        dus.api.verify(tmp_path / "wide")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "1.5"], "not a whole number"),
        (["--width", "2", "--mlp-width", "0.5"], "not a whole number"),
        (["--width-noise", "0.1"], "needs --width"),
        (["--width", "2", "--width-noise", "-1"], "finite number >= 0"),
    ],
)
def test_bad_width_options_are_one_error_line_and_write_nothing(tmp_path, run_dus, llama_source, args, message):
    code, out, err = run_dus("build", llama_source, tmp_path / "out", *args)
    assert_refused(code, err, message, outputs=tmp_path / "out")


def test_an_unsupported_family_is_refused_with_the_reason(tmp_path, run_dus, capsys):
    save_model("gpt2", tmp_path / "src")
    capsys.readouterr()  # transformers' progress bar while saving the source is not dus's output
    code, out, err = run_dus("build", tmp_path / "src", tmp_path / "out", "--width", "2")
    assert_refused(code, err, "width growth supports llama", "'gpt2'", outputs=tmp_path / "out")


def test_width_from_the_cli_plans_and_records(tmp_path, run_dus, llama_source):
    code, out, err = run_dus("plan", llama_source, "--width", "2", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["config"]["hidden_size"] == 64 and info["recipe"]["width"]["factor"] == 2
    code, out, err = run_dus("build", llama_source, tmp_path / "out", "--width", "2", "--overlap", "1", "--verify")
    assert code == 0, err
    assert "verified" in out


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_width_2_keeps_logits_and_greedy_generation(smollm2, tmp_path):
    dus.build(smollm2, tmp_path / "wide", width=2, dtype="float32", verify=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide", dtype=torch.float32).eval()
    assert grown.config.hidden_size == 1152 and grown.config.num_attention_heads == 18
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert _relative(model(ids).logits, grown(ids).logits) < 1e-5
    same = dict(max_new_tokens=20, do_sample=False, use_cache=True)
    assert torch.equal(model.generate(ids, **same), grown.generate(ids, **same))


def test_width_with_inserted_identity_blocks(tmp_path):
    """--width 2 on an expand plan: the zeroed projections stay zero at the new shape."""
    model = _source(tmp_path, "gemma2")
    dus.build(tmp_path / "src", tmp_path / "wide", width=2, insert_at="1", init="zero-out", verify=True)
    grown = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert grown.config.num_hidden_layers == 5
    assert not grown.model.layers[2].self_attn.o_proj.weight.any()
    _same_function(model, grown)


def test_the_record_lists_each_computed_tensor_and_verify_checks_it(tmp_path):
    from dus.verify.check import VerifyError

    _source(tmp_path, "llama")
    record = dus.build(tmp_path / "src", tmp_path / "wide", width=2, width_noise=0.01, width_seed=3)
    entry = record["computed"]["model.layers.1.mlp.down_proj.weight"]
    assert entry["op"] == "width_tile" and entry["inputs"] == ["base:model.layers.1.mlp.down_proj.weight"]
    assert entry["params"]["noise"] == 0.01 and entry["params"]["reps"] == [2, 2] and "seed" in entry["params"]
    path = tmp_path / "wide" / "dus_plan.json"
    data = json.loads(path.read_text())
    data["computed"]["model.layers.1.mlp.down_proj.weight"]["params"]["seed"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(VerifyError, match="computed-tensor recipes"):
        dus.api.verify(tmp_path / "wide")
