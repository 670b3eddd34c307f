"""mergekit passthrough recipes as input (`dus plan merge.yml`, `dus build merge.yml OUTPUT`) and as output
(`dus plan ... --mergekit-yaml`); where mergekit is installed, its own output for the same YAML."""

import json

import pytest
import torch
import yaml
from models import assert_verified, load_tensors, save_model
from refusal import assert_refused

import dus.api

SCALE = [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.5}, {"value": 1.0}]


def recipe(*slices, **top) -> dict:
    """A passthrough recipe of (model, start, stop[, slice parameters]) slices."""
    pieces = []
    for model, start, stop, *params in slices:
        piece = {"sources": [{"model": str(model), "layer_range": [start, stop]}]}
        if params:
            piece["parameters"] = params[0]
        pieces.append(piece)
    return {"slices": pieces, "merge_method": "passthrough", **top}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two 4-layer LLaMAs of the same shape (different seeds), as two fine-tunes of one base would be."""
    root = tmp_path_factory.mktemp("mergekit")
    save_model("llama", root / "a", seed=0)
    save_model("llama", root / "b", seed=1)
    return root / "a", root / "b"


def write(tmp_path, data, name="merge.yml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


RECIPES = {
    "solar": lambda a, b: recipe((a, 0, 3), (a, 1, 4)),
    "frankenmerge": lambda a, b: recipe((a, 0, 2), (b, 1, 3), (a, 2, 4)),
    "scale": lambda a, b: recipe((a, 0, 3), (a, 1, 4, {"scale": SCALE})),
}


def expected_tensors(data: dict) -> dict:
    """mergekit's passthrough, written out here: layer i of the output is the i-th layer of the slices, each
    tensor multiplied by the first scale entry whose filter is in its name; the rest from the first model."""
    out, index = {}, 0
    first = load_tensors(data["slices"][0]["sources"][0]["model"])
    out.update({k: v for k, v in first.items() if not k.startswith("model.layers.")})
    for piece in data["slices"]:
        source = piece["sources"][0]
        tensors = load_tensors(source["model"])
        for layer in range(*source["layer_range"]):
            for name, tensor in tensors.items():
                if name.startswith(f"model.layers.{layer}."):
                    scale = next(
                        (
                            e["value"]
                            for e in piece.get("parameters", {}).get("scale", [])
                            if "filter" not in e or e["filter"] in name
                        ),
                        1.0,
                    )
                    out[f"model.layers.{index}." + name[len(f"model.layers.{layer}.") :]] = tensor * scale
            index += 1
    return out


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_recipe_builds_the_passthrough_and_verifies(kind, models, tmp_path, run_dus):
    data = RECIPES[kind](*models)
    path = write(tmp_path, data)
    code, out, err = run_dus("build", path, tmp_path / "out")
    assert code == 0, err
    got, want = load_tensors(tmp_path / "out"), expected_tensors(data)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    computed = 3 * 2 if kind == "scale" else 0  # 3 layers, each with o_proj zeroed and down_proj halved
    assert_verified(tmp_path / "out", layers=6, computed=computed)
    record = json.loads((tmp_path / "out" / "dus_plan.json").read_text())
    assert set(record["plan"]["sources"]) == ({"base", "b"} if kind == "frankenmerge" else {"base"})


def test_plan_reads_the_recipe_as_source(models, tmp_path, run_dus):
    path = write(tmp_path, RECIPES["frankenmerge"](*models))
    code, out, err = run_dus("plan", path, "--json")
    assert code == 0, err
    layers = json.loads(out)["layers"]
    assert [(entry["source"], entry["source_layer"]) for entry in layers] == [
        ("base", 0),
        ("base", 1),
        ("b", 1),
        ("b", 2),
        ("base", 2),
        ("base", 3),
    ]


def test_dtype_and_models_list(models, tmp_path):
    a, _ = models
    data = {"models": [{"model": str(a)}], "merge_method": "passthrough", "dtype": "bfloat16"}
    record = dus.api.build(str(write(tmp_path, data)), tmp_path / "out")
    assert [entry["source_layer"] for entry in record["plan"]["layers"]] == [0, 1, 2, 3]
    assert record["plan"]["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_tensors(tmp_path / "out").values())


def test_unknown_keys_warned_once_listing_them(models, tmp_path, run_dus):
    data = {**RECIPES["solar"](*models), "name": "x", "chat_template": "chatml"}
    data["slices"][0]["sources"][0]["parameters"] = {"weight": 0.5}
    code, _, err = run_dus("plan", write(tmp_path, data))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(k in warnings[0] for k in ("chat_template", "name", "parameters.weight"))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, a, b: "- just\n- a list\n", "must hold a mapping"),
        (lambda d, a, b: {**d, "merge_method": "slerp"}, "merge_method 'slerp' merges weights, which mergekit does"),
        (lambda d, a, b: {**d, "merge_method": "ties"}, "merge_method 'ties' merges weights, which mergekit does"),
        (lambda d, a, b: recipe((a, 0, 3), (a, 2, 9)), "slice 2: layer_range [2, 9] is outside"),
        (lambda d, a, b: recipe((a, 0, 3), (b, 1, 4), (a, 3, 4)), "shape mismatch"),
        (lambda d, a, b: recipe((a, 0, 3), (b, 1, 4)), "final norm and head from the last slice's"),
        (lambda d, a, b: recipe((a, 0, 3), (a, 1, 4), parameters={"scale": 0.5}), "outside the layers"),
        (
            lambda d, a, b: {"models": [{"model": str(a)}, {"model": str(b)}], "merge_method": "passthrough"},
            "lists 2 models; a passthrough takes one",
        ),
        (lambda d, a, b: {**d, "base_model": str(b)}, "base_model"),
    ],
)
def test_bad_recipes_refused_in_one_line(change, message, models, tmp_path, run_dus, capsys):
    a, b = models
    if "shape" in message:  # a model whose layers are wider than a's
        b = tmp_path / "wide"
        import transformers

        config = transformers.LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        transformers.LlamaForCausalLM(config).save_pretrained(b)
        capsys.readouterr()
    path = write(tmp_path, change(RECIPES["solar"](a, b), a, b))
    code, out, err = run_dus("build", path, tmp_path / "out")
    assert out == ""
    assert_refused(code, err, message, outputs=tmp_path / "out")


def test_mergekit_yaml_round_trip(models, tmp_path, run_dus):
    a, _ = models
    for options in (["--overlap", "1"], ["--recipe", "expand", "--new-layers", "2"], ["--layers", "0:2,1,1,3"]):
        code, out, err = run_dus("plan", a, *options, "--mergekit-yaml")
        assert code == 0, err
        assert yaml.safe_load(out)["merge_method"] == "passthrough"
        again = dus.api.plan(str(write(tmp_path, out)))
        direct = dus.api.plan(str(a), **_options(options))
        assert again.tensors == direct.tensors  # every output tensor: the same inputs, factors and names


def _options(argv: list[str]) -> dict:
    return {
        argv[i].lstrip("-").replace("-", "_"): (int(argv[i + 1]) if argv[i + 1].isdigit() else argv[i + 1])
        for i in range(0, len(argv), 2)
    }


def test_mergekit_yaml_refused_for_a_blend(models, tmp_path, run_dus):
    a, _ = models
    recipe_file = write(tmp_path, {"source": str(a), "layers": [{"range": [0, 4]}, {"blend": [2, 3]}]}, "r.yml")
    code, out, err = run_dus("plan", "--config", recipe_file, "--mergekit-yaml")
    assert out == ""
    assert_refused(code, err, "error: this plan has no mergekit passthrough recipe: it blends")


@pytest.mark.parametrize(
    "options, why",
    [
        (["--width", "2"], "it grows the width"),
        (["--insert-at", "1", "--init", "aligned-average"], "its new layers are computed"),
        (["--overlap", "1", "--experts", "4", "--top-k", "2"], "it upcycles the MLPs into experts"),
    ],
)
def test_mergekit_yaml_refused_for_computed_tensors(options, why, models, run_dus):
    """Width growth, computed initialisers and upcycling write tensors mergekit's passthrough cannot."""
    code, out, err = run_dus("plan", models[0], *options, "--mergekit-yaml")
    assert out == ""
    assert_refused(code, err, "this plan has no mergekit passthrough recipe", why)


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_same_tensors_as_mergekit(kind, models, tmp_path):
    """Where mergekit is installed: its output for the same YAML, name by name (see docs/recipes.md)."""
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    data = RECIPES[kind](*models)
    run_merge(
        MergeConfiguration.model_validate(data),
        str(tmp_path / "mergekit"),
        MergeOptions(copy_tokenizer=False, write_model_card=False),
    )
    dus.api.build(str(write(tmp_path, data)), tmp_path / "dus")
    theirs, ours = load_tensors(tmp_path / "mergekit"), load_tensors(tmp_path / "dus")
    assert set(theirs) == set(ours)
    for name in theirs:
        assert torch.equal(theirs[name], ours[name]), name  # equal as numbers: mergekit's x * 0 may be -0.0


def test_the_solar_recipe_is_the_overlap_plan(models, tmp_path):
    """The mergekit SOLAR recipe and `--overlap` give the same output tensors, so the same build."""
    a, _ = models
    from_yaml = dus.api.plan(str(write(tmp_path, recipe((a, 0, 3), (a, 1, 4)))))
    assert from_yaml.tensors == dus.api.plan(str(a), overlap=1).tensors
