"""Every architecture, several plans: bytes, logits and greedy generation are exact."""

import pytest
import torch
import transformers
from models import ARCHITECTURES, VOCAB, assert_verified, load_tensors, reference_model, save_model

import dus.api

PLANS = {
    "overlap1": dict(overlap=1),  # SOLAR-style: 0,1,2,1,2,3
    "repeats": dict(layers="0:2,1,1,2:4"),  # a layer three times in a row
    "stack": dict(overlap=0),  # the whole stack twice
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {arch: (root / arch, save_model(arch, root / arch)) for arch in ARCHITECTURES}


@pytest.mark.parametrize("plan_name", PLANS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_build_is_exact(arch, plan_name, sources, tmp_path):
    src_dir, model = sources[arch]
    record = dus.api.build(str(src_dir), tmp_path / "out", shard_size="40KB", **PLANS[plan_name])
    plan = [layer["source_layer"] for layer in record["plan"]["layers"]]
    prefix = record["sources"]["base"]["layer_prefix"]

    # (a) every output tensor is bit-identical to its planned source tensor, names preserved
    src, out = load_tensors(src_dir), load_tensors(tmp_path / "out")
    expected_names = {k for k in src if not k.startswith(prefix)}
    for i, s in enumerate(plan):
        for name, tensor in src.items():
            if name.startswith(f"{prefix}{s}."):
                target = f"{prefix}{i}." + name[len(f"{prefix}{s}.") :]
                expected_names.add(target)
                assert torch.equal(out[target].view(torch.uint8), tensor.view(torch.uint8)), target
    assert set(out) == expected_names
    for name in src:
        if not name.startswith(prefix):
            assert torch.equal(out[name], src[name])
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1  # really sharded

    # (b) loads with AutoModelForCausalLM; logits equal an independent in-memory reference exactly
    built = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    reference = reference_model(model, plan)
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(ids).logits, reference(ids).logits)
    # (c) greedy generation with a KV cache equals the reference's
    kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert torch.equal(built.generate(ids[:1], **kwargs), reference.generate(ids[:1], **kwargs))
    if model.config.tie_word_embeddings:
        assert built.get_output_embeddings().weight.data_ptr() == built.get_input_embeddings().weight.data_ptr()

    # and dus verify agrees
    assert_verified(tmp_path / "out", layers=len(plan))
