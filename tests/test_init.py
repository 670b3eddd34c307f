"""New-layer initialisers and placement (dus/plan/insert.py, dus/plan/init_tensors.py) and freezing them."""

import json

import pytest
import torch
import transformers
from models import assert_verified, load_tensors, save_model
from refusal import assert_refused

import dus.api
from dus.errors import InputError
from dus.plan.insert import insertion_points


def test_insertion_points():
    assert insertion_points(30, "top-half", 6) == [15, 17, 19, 22, 24, 26]
    assert insertion_points(8, "every:2", None) == [1, 3, 5, 7]
    assert insertion_points(8, None, 4) == [1, 3, 5, 7]  # today's expand placement
    assert insertion_points(8, "5, 1", 2) == [1, 5]


@pytest.mark.parametrize(
    "spec, new_layers, message",
    [
        ("top-half", None, "needs --new-layers"),
        ("top-half", 4, "must be 1..3"),
        ("every:0", None, "1 <= K"),
        ("1,9", None, "out of range"),
        ("1,1", None, "twice"),
        ("1,2", 3, "--new-layers says 3"),
        ("x", None, "parse"),
    ],
)
def test_bad_insertion_points_are_refused(spec, new_layers, message):
    with pytest.raises(InputError, match=message):
        insertion_points(8, spec, new_layers)


def _logits(directory, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("init", ["zero-out", "aligned-average", "predicted"])
def test_function_preserving_initialisers_give_the_source_logits_bit_for_bit(tmp_path, init):
    source = tmp_path / "src"
    save_model("qwen2", source)  # biases too
    record = dus.api.build(source, tmp_path / "out", insert_at="0,2", init=init)
    layers = record["plan"]["layers"]
    assert [(entry["source_layer"], entry["new"]) for entry in layers] == [
        (0, False),
        (0, True),
        (1, False),
        (2, False),
        (2, True),
        (3, False),
    ]
    computed = {"zero-out": 4, "aligned-average": 24, "predicted": 24}[init]  # 2 x (2 zeroed, or all 12)
    assert_verified(tmp_path / "out", 6, computed)
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(source, ids), _logits(tmp_path / "out", ids))
    if init != "zero-out":
        assert record["plan"]["recipe"]["init"]["layers"] == [1, 4]


def test_copy_is_a_plain_copy_and_changes_the_function(tmp_path, llama_source):
    dus.api.build(llama_source, tmp_path / "out", insert_at="1", init="copy")
    tensors, source = load_tensors(tmp_path / "out"), load_tensors(llama_source)
    assert torch.equal(tensors["model.layers.2.mlp.down_proj.weight"], source["model.layers.1.mlp.down_proj.weight"])
    ids = torch.randint(3, 96, (1, 8))
    assert not torch.equal(_logits(llama_source, ids), _logits(tmp_path / "out", ids))


def _permuted_neighbour(directory):
    """Layer 2 := layer 1 with its MLP neurons and its key/value groups (with their query heads) permuted."""
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    a, b = model.model.layers[1], model.model.layers[2]
    neurons = torch.randperm(a.mlp.up_proj.out_features, generator=torch.Generator().manual_seed(3))
    head_dim, per = 8, 2  # tests/models.py: 4 heads of 8, 2 key/value heads
    groups = torch.tensor([1, 0])
    q_rows = (groups[:, None] * per * head_dim + torch.arange(per * head_dim)).reshape(-1)
    kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
        for proj in (b.mlp.gate_proj, b.mlp.up_proj):
            proj.weight.copy_(proj.weight[neurons])
        b.self_attn.q_proj.weight.copy_(b.self_attn.q_proj.weight[q_rows])
        for proj in (b.self_attn.k_proj, b.self_attn.v_proj):
            proj.weight.copy_(proj.weight[kv_rows])
    model.save_pretrained(directory)


def test_aligned_average_undoes_a_permutation_of_the_neighbour(tmp_path):
    source = tmp_path / "src"
    save_model("llama", source)
    _permuted_neighbour(source)
    dus.api.build(source, tmp_path / "out", insert_at="1", init="aligned-average")
    out, src = load_tensors(tmp_path / "out"), load_tensors(source)
    for name in ("mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.allclose(out[f"model.layers.2.{name}.weight"], src[f"model.layers.1.{name}.weight"], atol=1e-6)
    # without alignment the average of the two would not be layer 1
    plain = (src["model.layers.1.mlp.up_proj.weight"] + src["model.layers.2.mlp.up_proj.weight"]) / 2
    assert not torch.allclose(plain, src["model.layers.1.mlp.up_proj.weight"], atol=1e-3)
    assert not out["model.layers.2.mlp.down_proj.weight"].any()


def test_predicted_extrapolates_a_stack_that_changes_linearly(tmp_path):
    """W_l = W_0 + l·D for every tensor: the fitted map predicts W_{p+1/2} for a layer inserted after p."""
    source = tmp_path / "src"
    model = save_model("llama", source)
    layers = model.model.layers
    with torch.no_grad():
        for l in range(1, len(layers)):
            for p0, p1, pl in zip(layers[0].parameters(), layers[1].parameters(), layers[l].parameters()):
                pl.copy_(p0 + l * (p1 - p0) if l > 1 else p1)
    model.save_pretrained(source)
    dus.api.build(source, tmp_path / "out", insert_at="1", init="predicted")
    out, src = load_tensors(tmp_path / "out"), load_tensors(source)
    for name in ("mlp.up_proj.weight", "self_attn.q_proj.weight", "input_layernorm.weight"):
        want = (src[f"model.layers.1.{name}"] + src[f"model.layers.2.{name}"]) / 2
        assert torch.allclose(out[f"model.layers.2.{name}"], want, atol=1e-4), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--init", "aligned-average", "--insert-at", "3"], "has no layer after it"),
        (["--init", "predicted", "--recipe", "expand", "--new-layers", "2"], "has no layer after it"),
        (["--init", "aligned-average", "--overlap", "1"], "use it with --recipe expand"),
        (["--init", "average"], "--init must be one of"),
        (["--insert-at", "1", "--recipe", "stack"], "--insert-at places"),
        (["--insert-at", "1", "--overlap", "1"], "--overlap is not an option of --recipe expand"),  # implied expand
        (["--init", "aligned-average", "--insert-at", "1", "--width", "2"], "not supported"),
    ],
)
def test_bad_initialiser_options_are_one_error_line_and_write_nothing(tmp_path, run_dus, llama_source, args, message):
    code, out, err = run_dus("build", llama_source, tmp_path / "out", *args)
    assert_refused(code, err, message, outputs=tmp_path / "out")


def test_zero_out_on_a_plan_that_repeats_layers_marks_and_zeroes_the_repeats(tmp_path, llama_source):
    record = dus.api.build(llama_source, tmp_path / "out", recipe="interleave", factor=2, init="zero-out")
    layers = record["plan"]["layers"]
    assert [entry["new"] for entry in layers] == [False, True] * 4
    assert all(entry["op"] == ("zero" if entry["new"] else "copy") for entry in layers)
    ids = torch.randint(3, 96, (1, 8))
    assert torch.equal(_logits(llama_source, ids), _logits(tmp_path / "out", ids))


def test_freeze_original_trains_exactly_the_interleaved_new_layers(tmp_path, llama_source):
    from dus.runtime import decoder_layers
    from dus.train.freeze import apply_freeze, trainable_layers

    dus.api.build(llama_source, tmp_path / "out", insert_at="0,2", init="aligned-average")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    train = trainable_layers("original", str(tmp_path / "out"), 6)
    assert train == [1, 4]
    apply_freeze(model, decoder_layers(model), train)
    ids = torch.randint(3, 96, (2, 8))
    model(ids, labels=ids).loss.backward()
    got = {name for name, p in model.named_parameters() if p.grad is not None}
    want = {name for name, _ in model.named_parameters() if name.startswith(("model.layers.1.", "model.layers.4."))}
    assert got == want


def test_init_and_insert_at_from_a_recipe_file_and_the_plan_record(tmp_path, run_dus, llama_source):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: {llama_source}\ninit: predicted\ninsert_at: top-half\nnew_layers: 1\n")
    code, out, err = run_dus("plan", "--config", recipe, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["recipe"]["init"] == {"name": "predicted", "layers": [3], "predictor": {"rank": 8, "ridge": 0.001}}


def test_insert_at_flags_plan_expand_with_its_new_layers(run_dus, llama_source):
    """--insert-at implies --recipe expand before the options are checked against the recipe: --new-layers is
    expand's own option, not one the default recipe (dus) would ignore."""
    code, out, err = run_dus("plan", llama_source, "--insert-at", "top-half", "--new-layers", "1", "--json")
    assert code == 0, err
    recipe = json.loads(out)["recipe"]
    assert recipe["name"] == "expand" and recipe["new_layers"] == 1 and recipe["insert_at"] == "top-half"


def test_growth_keys_of_a_recipe_file_are_typed_and_checked(tmp_path, run_dus, llama_source):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: {llama_source}\ninsert_at: 1\ninit: zero-out\n")  # an int where a string goes
    code, out, err = run_dus("plan", "--config", recipe, "--json")
    assert code == 0, err
    assert json.loads(out)["recipe"]["insert_at"] == "1"
    recipe.write_text(f"source: {llama_source}\nwidth: two\n")
    code, out, err = run_dus("plan", "--config", recipe)
    assert code == 2 and err.startswith("error: bad value 'two' for 'width'"), err
