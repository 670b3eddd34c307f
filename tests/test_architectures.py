"""A slice of the architecture matrix (dus/testing/architectures.py) on every run: one of each
failure class the full matrix found, built and compared bit for bit, or refused."""

import pytest

from dus.testing import architectures, matrix


@pytest.mark.parametrize(
    "model_type, extra, verdict, detail",
    [
        # a layer constant computed from the layer index (DiffLlama's lambda_init)
        ("diffllama", {}, "refused", "self_attn.lambda_init"),
        # a map keyed by layer index (per_layer_config: the full-attention layers' head_dim), remapped
        ("gemma4_text", {"hidden_size_per_layer_input": 0}, "exact", ""),
        # tensors outside the stack holding one block per layer (Gemma 4's per-layer input embedding), rearranged
        ("gemma4_text", {}, "exact", ""),
        # KV-shared layers whose source (the last earlier layer of a type) the plan moves
        ("gemma3n_text", {}, "refused", "store_full_length_kv"),
        # an MoE range given by start/end/interval fields, re-solved for the new stack
        ("ernie4_5_moe", {}, "exact", ""),
        # two attention sublayers per layer, cached at 2i and 2i+1 (the reference must number them so)
        ("longcat_flash", {}, "exact", ""),
        # a layer count given only by a per-layer list (Nemotron-H's layers_block_type in transformers 5)
        ("nemotron_h", {}, "exact", ""),
        # encoder-only and encoder-decoder configs
        ("bert", {}, "refused", "DUS needs a decoder stack"),
        ("bart", {}, "refused", "DUS needs a decoder stack"),
    ],
)
def test_architecture(model_type, extra, verdict, detail, tmp_path):
    got, why = architectures.check(model_type, tmp_path, **extra)
    assert (got, detail in why) == (verdict, True), why


def test_nemotron_h_pattern_string_remapped(tmp_path):
    """A Nemotron-H config.json as released (a layer count and hybrid_override_pattern, one character a layer:
    M Mamba, E MoE, * attention, - MLP): the string follows the plan, and the model equals the reference."""
    import json

    import torch
    import transformers

    import dus.api
    from dus.testing.reference import reference_model

    model = architectures.tiny_model("nemotron_h")
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src/config.json").read_text())
    symbols = {"linear_attention": "M", "moe": "E", "full_attention": "*", "mlp": "-"}
    pattern = "".join(symbols[t] for t in config.pop("layers_block_type"))
    (tmp_path / "src/config.json").write_text(
        json.dumps({**config, "num_hidden_layers": 6, "hybrid_override_pattern": pattern})
    )
    plan = [0, 1, 2, 3, 2, 3, 4, 5]
    dus.api.build(str(tmp_path / "src"), tmp_path / "out", layers="0:4,2:6")
    written = json.loads((tmp_path / "out/config.json").read_text())
    assert (written["num_hidden_layers"], written["hybrid_override_pattern"]) == (8, "".join(pattern[i] for i in plan))
    built = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    ids = torch.randint(3, architectures.VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(ids).logits, reference_model(model, plan, built.config)(ids).logits)


def test_a_pattern_string_of_the_wrong_length_is_refused():
    from dus.errors import InputError
    from dus.plan.config import output_config

    with pytest.raises(InputError, match="hybrid_override_pattern.*5 entries for 6 layers"):
        output_config({"num_hidden_layers": 6, "hybrid_override_pattern": "M-M*-"}, [0, 1, 2])


@pytest.mark.parametrize(
    "model_type, detail",
    [
        # an image-text-to-text model that is no causal LM, grown through --stack; an image as well as text
        ("llava", "text and image"),
        # Mllama's cross-attention layers, an index list of the nested text config, remapped
        ("mllama", "text only"),
    ],
)
def test_multimodal_language_stack(model_type, detail, tmp_path):
    from dus.testing import multimodal

    (row,) = multimodal.rows([model_type])
    verdict, why = row.run(tmp_path)
    assert verdict == "exact" and why.startswith(detail), why


def test_formula_variant_row_is_exact(tmp_path):
    """DeepSeek-V3's first_k_dense_replace: the tiny --overlap 2 plan puts a dense layer after an MoE one
    (refused), a plan keeping the dense layer first is expressible and exact."""
    (plain, dense_first) = architectures.rows(["deepseek_v3"])
    assert plain.run(tmp_path / "a")[0] == "refused"
    assert dense_first.run(tmp_path / "b") == ("exact", "")


def test_doc_rows_round_trip(tmp_path):
    results = [
        {"model_type": "llama", "variant": "", "verdict": "exact", "detail": ""},
        {"model_type": "zamba", "variant": "--layers 0:6,3:6", "verdict": "refused", "detail": "a | b"},
    ]
    doc = tmp_path / "architectures.md"
    matrix.write_doc(results, doc)
    matrix.write_doc(results[:1], doc, multimodal=True)
    assert matrix.read_doc(doc) == results and matrix.read_doc(doc, multimodal=True) == results[:1]
    matrix.write_doc(results[1:], doc)  # rewriting one section keeps the other
    assert matrix.read_doc(doc, multimodal=True) == results[:1]


def test_nested_config_counting_layers_by_a_list():
    """Nemotron-H's text config inside a multimodal config (nemotron_h_omni) counts its layers only by
    layers_block_type: the count transformers derives is made explicit there too."""
    from dus.read.architecture import with_layer_count

    config = {"model_type": "m", "text_config": {"model_type": "nemotron_h", "layers_block_type": ["mamba"] * 3}}
    assert with_layer_count(config)["text_config"]["num_hidden_layers"] == 3
    assert with_layer_count({"model_type": "x", "num_hidden_layers": 2, "layers_block_type": ["a"] * 5}) == {
        "model_type": "x",
        "num_hidden_layers": 2,
        "layers_block_type": ["a"] * 5,
    }  # an explicit count is kept


def test_a_merge_keeps_earlier_reruns_in_the_stamp(tmp_path):
    doc = tmp_path / "architectures.md"
    rows = [{"model_type": "llama", "variant": "", "verdict": "exact", "detail": ""}]
    stamp = "on 2026-12-01 at commit abc with transformers 5.24.0 (rows rerun on 2026-12-02 at commit def: llama)"
    matrix.write_doc(rows, doc, stamp=stamp)
    assert matrix._recorded_stamp(doc, multimodal=False) == stamp
