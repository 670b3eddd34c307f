"""--stack PREFIX: grow the language model of a multimodal checkpoint (Gemma-3: a text stack
beside a vision tower), its nested text_config remapped, the vision tower copied untouched."""

import json

import pytest
import torch
import transformers
from models import load_tensors, reference_model
from refusal import assert_refused

import dus.api
from dus.errors import InputError
from dus.read.architecture import stack_config_key

TEXT = "language_model.model.layers."  # as transformers saves Gemma-3 checkpoints
VISION = "vision_tower.encoder.layers."
VOCAB = 64


def gemma3_config(vision_layers=2):
    text = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=4,
        sliding_window_pattern=2,
    )  # sliding, full, sliding, full: the remap must follow the plan
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(gemma3_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no constant tensors: a misplaced copy shows
    directory = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(directory)
    return directory, model.eval()


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "out"
    record = dus.api.build(str(source[0]), out, overlap=1, stack=TEXT)
    return out, record


def test_grows_the_named_stack_exactly(source, built):
    src_dir, model = source
    out_dir, record = built
    plan = [layer["source_layer"] for layer in record["plan"]["layers"]]
    assert plan == [0, 1, 2, 1, 2, 3]
    assert (
        record["plan"]["recipe"]["stack"] == f"{TEXT}:text_config"
        and record["plan"]["recipe"]["stack_config"] == "text_config"
    )
    src, out = load_tensors(src_dir), load_tensors(out_dir)
    # every tensor outside the text stack (the vision tower, embeddings, projector) is bit-identical
    outside = {k for k in src if not k.startswith(TEXT)}
    assert any(k.startswith(VISION) for k in outside)
    for name in outside:
        assert torch.equal(out[name].view(torch.uint8), src[name].view(torch.uint8)), name
    # text layer i is source layer plan[i]
    for i, s in enumerate(plan):
        names = [k for k in src if k.startswith(f"{TEXT}{s}.")]
        assert names
        for name in names:
            target = f"{TEXT}{i}." + name[len(f"{TEXT}{s}.") :]
            assert torch.equal(out[target], src[name]), target
    assert len(out) == len(outside) + sum(len([k for k in src if k.startswith(f"{TEXT}{s}.")]) for s in plan)
    config = json.loads((out_dir / "config.json").read_text())
    source_config = json.loads((src_dir / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 6
    assert config["text_config"]["layer_types"] == [source_config["text_config"]["layer_types"][s] for s in plan]
    assert config["vision_config"] == source_config["vision_config"]


def test_output_loads_and_its_text_logits_equal_the_reference(source, built):
    _, model = source
    out_dir, record = built
    plan = [layer["source_layer"] for layer in record["plan"]["layers"]]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert type(loaded).__name__ == "Gemma3ForConditionalGeneration"
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want, before = loaded(ids).logits, reference_model(model, plan)(ids).logits, model(ids).logits
    assert torch.equal(got, want)
    assert not torch.equal(got, before)  # the grown stack computes something else than the source


def test_verify_rederives_the_stack(built):
    out_dir, _ = built
    report = dus.api.verify(out_dir)  # raises on any mismatch
    assert any("6 layers" in check for check in report.checks)


def test_several_stacks_refused_without_stack(source):
    with pytest.raises(InputError, match=r"nested configs \(text_config: 4 layers, vision_config: 2 layers.*--stack"):
        dus.api.plan(str(source[0]), overlap=1)


def test_wrong_stack_refused_in_one_line(source, run_dus):
    code, out, err = run_dus("plan", source[0], "--overlap", "1", "--stack", "model.language_model.layers.")
    assert out == ""
    assert assert_refused(code, err).startswith("error: --stack model.language_model.layers.: no stack")
    assert TEXT in err and VISION in err  # the prefixes there are, to choose from


def test_stack_from_a_recipe_file(source, tmp_path, run_dus):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"source: {source[0]}\noverlap: 1\nstack: {TEXT.rstrip('.')}\n")
    code, out, err = run_dus("plan", "--config", recipe, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["layer_prefix"] == TEXT and info["config"]["text_config"]["num_hidden_layers"] == 6


def test_stack_config_matched_by_layer_count():
    config = {"model_type": "m", "text_config": {"num_hidden_layers": 3}, "vision_config": {"num_hidden_layers": 2}}
    names = [f"lm.layers.{i}.w" for i in range(3)] + [f"vt.layers.{i}.w" for i in range(2)]
    assert stack_config_key(config, names, "lm.layers") == "text_config"
    assert stack_config_key(config, names, "vt.layers.") == "vision_config"
    with pytest.raises(InputError, match="no config"):
        stack_config_key(config, names + ["lm.layers.3.w"], "lm.layers.")  # 4 layers: no config counts 4
    config["audio_config"] = {"num_hidden_layers": 3}
    with pytest.raises(InputError, match="several"):
        stack_config_key(config, names, "lm.layers.")


def test_nested_config_validated(source, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(source[0], bad)
    config = json.loads((bad / "config.json").read_text())
    config["text_config"]["layer_types"] = config["text_config"]["layer_types"][:3]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"layer_types.*\(3\)|layer_types has 3 entries"):
        dus.api.plan(str(bad), overlap=1, stack=TEXT)


def test_nested_config_named_where_counts_tie(tmp_path):
    """A vision tower as deep as the text stack: the count cannot say which config is text's; name it."""
    transformers.Gemma3ForConditionalGeneration(gemma3_config(vision_layers=4)).save_pretrained(tmp_path / "src")
    with pytest.raises(InputError, match=f"several config.*--stack {TEXT}:text_config"):
        dus.api.plan(str(tmp_path / "src"), overlap=1, stack=TEXT)
    with pytest.raises(InputError, match="no nested config 'audio_config'"):
        dus.api.plan(str(tmp_path / "src"), overlap=1, stack=f"{TEXT}:audio_config")
    record = dus.api.build(str(tmp_path / "src"), tmp_path / "out", overlap=1, stack=f"{TEXT}:text_config")
    assert record["plan"]["recipe"]["stack"] == f"{TEXT}:text_config"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["text_config"]["num_hidden_layers"], config["vision_config"]["num_hidden_layers"]) == (6, 4)
    dus.api.verify(tmp_path / "out")  # re-derives the named config from dus_plan.json


def test_vision_tower_refused_as_an_encoder(source):
    with pytest.raises(InputError, match="DUS needs a decoder stack"):
        dus.api.plan(str(source[0]), overlap=0, stack=VISION)
