"""A slice of the architecture matrix (dus/testing/architectures.py) on every run: one of each
failure class the full matrix found, built and compared bit for bit, or refused."""

import pytest

from dus.testing import architectures


@pytest.mark.parametrize("model_type, extra, verdict, detail", [
    # a layer constant computed from the layer index (DiffLlama's lambda_init)
    ("diffllama", {}, "refused", "self_attn.lambda_init"),
    # a map keyed by layer index (per_layer_config: the full-attention layers' head_dim), remapped
    ("gemma4_text", {"hidden_size_per_layer_input": 0}, "exact", ""),
    # a tensor outside the stack sized by the layer count (Gemma 4's per-layer input embedding)
    ("gemma4_text", {}, "refused", "model.embed_tokens_per_layer.weight shape"),
    # an MoE range given by start/end/interval fields, re-solved for the new stack
    ("ernie4_5_moe", {}, "exact", ""),
    # two attention sublayers per layer, cached at 2i and 2i+1 (the reference must number them so)
    ("longcat_flash", {}, "exact", ""),
    # encoder-only and encoder-decoder configs
    ("bert", {}, "refused", "DUS needs a decoder stack"),
    ("bart", {}, "refused", "DUS needs a decoder stack"),
])
def test_architecture(model_type, extra, verdict, detail, tmp_path):
    got, why = architectures.check(model_type, tmp_path, **extra)
    assert (got, detail in why) == (verdict, True), why
